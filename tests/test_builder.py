"""The dataset builder, checked through upstream's own readers and builder."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from cn_clip_pokemon.builder import SPLITS, assign_splits, build_dataset, build_dataset_command, Picture
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.images import decode_picture


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = {bytes(key): bytes(value) for key, value in txn.cursor()}
    env.close()
    return items


def read_pairs(dataset, split):
    items = read_lmdb(dataset / "lmdb" / split / "pairs")
    count = int(items.pop(b"num_samples"))
    assert sorted(items) == sorted(str(i).encode() for i in range(count))
    return [pickle.loads(items[str(i).encode()]) for i in range(count)]


def test_upstream_lmdbdataset_reads_every_split(sprite_dataset):
    from cn_clip.clip import _tokenizer
    from cn_clip.training.data import LMDBDataset

    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["format"] == 1 and info["image_size"] == 64 and info["split_by"] == "view"
    for split in SPLITS:
        dataset = LMDBDataset(str(sprite_dataset / "lmdb" / split), split=split, max_txt_length=24, resolution=64)
        assert len(dataset) == info["splits"][split]["pairs"] > 0
        assert dataset.number_images == info["splits"][split]["images"]
        for index in range(len(dataset)):
            image, text, eos_index = dataset[index]
            assert tuple(image.shape) == (3, 64, 64)
            assert text[eos_index] == _tokenizer.vocab["[SEP]"]


def test_upstream_build_lmdb_dataset_gives_the_same_pairs(sprite_dataset, tmp_path):
    for split in SPLITS:
        for name in (f"{split}_imgs.tsv", f"{split}_texts.jsonl"):
            shutil.copy(sprite_dataset / name, tmp_path / name)
    result = subprocess.run(
        [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(tmp_path), "--splits", "train,valid,test"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for split in SPLITS:
        assert read_pairs(tmp_path, split) == read_pairs(sprite_dataset, split)
        assert read_lmdb(tmp_path / "lmdb" / split / "imgs") == read_lmdb(sprite_dataset / "lmdb" / split / "imgs")
