"""The dataset builder, checked through upstream's own readers and builder."""
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from cn_clip_pokemon.builder.build import build_dataset
from cn_clip_pokemon.builder.scan import Picture
from cn_clip_pokemon.builder.splits import view_splits
from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.dataset_format import SPLITS
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.images import decode_picture
from conftest import png_header_only


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


def tsv_ids(dataset, split):
    with open(dataset / f"{split}_imgs.tsv", encoding="utf-8") as file:
        return [int(line.split("\t", 1)[0]) for line in file]


def test_dataset_info_matches_what_was_written(sprite_dataset):
    from cn_clip_pokemon.pokedex import Pokedex

    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    pokedex = Pokedex.load()
    assert info["names"] == [pokedex.name(number) for number in range(1, 26)]
    # fetch-sprites' provenance file is the one entry not built: hidden, and listed as such.
    assert [(entry["file"], entry["kind"]) for entry in info["skipped"]] == [(".sprites.json", "hidden")]
    assert info["templates"] == ["{}"] and info["seed"] == 0
    assert info["counts"] == {"built": len(info["images"]), "skipped": 1, "skipped_by_kind": {"hidden": 1}}
    all_ids = []
    for split in SPLITS:
        ids = tsv_ids(sprite_dataset, split)
        all_ids += ids
        assert info["splits"][split]["images"] == len(ids)
        assert all(info["images"][str(image_id)]["split"] == split for image_id in ids)
        texts = [json.loads(line) for line in (sprite_dataset / f"{split}_texts.jsonl").read_text(encoding="utf-8").splitlines()]
        assert info["splits"][split]["texts"] == len(texts)
        assert sorted(i for text in texts for i in text["image_ids"]) == sorted(ids)
        for text in texts:  # every pair's text is the name of the Pokemon in its picture
            assert {info["images"][str(i)]["name"] for i in text["image_ids"]} == {text["text"]}
    assert sorted(all_ids) == sorted(map(int, info["images"])) and len(set(all_ids)) == len(all_ids)
    entry = info["images"][str(all_ids[0])]
    assert set(entry) == {"split", "number", "name", "source", "view"}
    assert entry["source"] == f"{entry['number']:04d}{entry['name']}/{entry['view']}.png"
    # Split by view: every Pokemon is trained on, and valid/test are unseen pictures of seen ones.
    train_numbers = {image["number"] for image in info["images"].values() if image["split"] == "train"}
    assert train_numbers == set(range(1, 26))
    assert info["splits"]["valid"]["images"] > 0 and info["splits"]["test"]["images"] > 0


def test_no_picture_is_in_two_splits(sprite_dataset):
    seen = {}
    for split in SPLITS:
        with open(sprite_dataset / f"{split}_imgs.tsv", encoding="utf-8") as file:
            for line in file:
                image_id, encoded = line.rstrip("\n").split("\t")
                image = decode_picture(encoded)
                assert image.size == (64, 64) and image.mode == "RGB"
                digest = image.tobytes()
                assert digest not in seen, f"{image_id} ({split}) repeats {seen.get(digest)}"
                seen[digest] = (image_id, split)


def copy_sprites(sprite_pictures, target, wanted):
    """A flat folder from the sprite slice: {new name: sprite file relative to the slice}."""
    target.mkdir()
    for new_name, relative in wanted.items():
        shutil.copy(sprite_pictures / relative, target / new_name)
    return target


@pytest.fixture
def flat_folder_with_problems(sprite_pictures, tmp_path):
    folder = copy_sprites(sprite_pictures, tmp_path / "imgs", {
        "0001妙蛙种子.png": "0001妙蛙种子/front_00.png",
        "4小火龍.png": "0004小火龙/front_00.png",  # traditional name
        "0007-杰尼龟.png": "0007杰尼龟/front_00.png",
        "025_皮卡丘.png": "0025皮卡丘/front_00.png",
        "皮卡丘_2.png": "0025皮卡丘/front_01.png",
        "妙蛙种子 (copy).png": "0001妙蛙种子/front_00.png",  # the same picture again
        "0002妙蛙种子.png": "0002妙蛙草/front_00.png",  # number and name disagree
    })
    (folder / "0010绿毛虫.png").write_bytes(b"")
    (folder / "0011铁甲蛹.png").write_bytes((sprite_pictures / "0011铁甲蛹" / "front_00.png").read_bytes()[:200])
    (folder / "0012巴大蝶.png").write_text("this is not a picture")
    (folder / "1999.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a Pokemon")
    (folder / "0013独角虫.png").write_bytes(png_header_only(20_000, 20_000))
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


def test_bad_input_is_reported_never_dropped_silently(flat_folder_with_problems, tmp_path):
    summary = build_dataset(flat_folder_with_problems, tmp_path / "out", image_size=32, progress=False)
    reasons = {entry["file"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == {"妙蛙种子 (copy).png", "0002妙蛙种子.png", "0010绿毛虫.png", "0011铁甲蛹.png",
                            "0012巴大蝶.png", "1999.png", "notes.txt", "0013独角虫.png", ".DS_Store"}
    assert "starts with '.'" in reasons[".DS_Store"]
    assert "same picture as 0001妙蛙种子.png" in reasons["妙蛙种子 (copy).png"]
    assert "#2 妙蛙草" in reasons["0002妙蛙种子.png"] and "妙蛙种子" in reasons["0002妙蛙种子.png"]
    assert "empty" in reasons["0010绿毛虫.png"]
    assert "truncated" in reasons["0011铁甲蛹.png"]
    assert "not a picture" in reasons["0012巴大蝶.png"]
    assert "1999 is not in the Pokedex" in reasons["1999.png"]
    assert "no Pokemon number or known name" in reasons["notes.txt"]
    assert "decompression bomb" in reasons["0013独角虫.png"]
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["skipped"] == summary["skipped"]
    assert info["counts"] == {"built": 5, "skipped": 9, "skipped_by_kind": {
        "bad picture": 4, "duplicate": 1, "hidden": 1, "not a Pokemon name": 3}}
    assert info["names"] == ["妙蛙种子", "小火龙", "杰尼龟", "皮卡丘"]
    assert sorted(image["source"] for image in info["images"].values()) == sorted(
        ["0001妙蛙种子.png", "4小火龍.png", "0007-杰尼龟.png", "025_皮卡丘.png", "皮卡丘_2.png"])


def test_strict_stops_and_leaves_the_previous_dataset(flat_folder_with_problems, sprite_pictures, tmp_path, capsys):
    out = tmp_path / "out"
    good = copy_sprites(sprite_pictures, tmp_path / "good", {"0001妙蛙种子.png": "0001妙蛙种子/front_00.png"})
    build_dataset(good, out, image_size=32, progress=False)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    status = cli_main(["build-dataset", "--images", str(flat_folder_with_problems), "--out", str(out),
                       "--image-size", "32", "--strict", "--no-progress"])
    assert status == 1
    error = capsys.readouterr().err
    assert "--strict" in error and str(flat_folder_with_problems) in error
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["good", "imgs", "out"]  # no temp folder left


def test_a_failure_midway_leaves_the_previous_dataset(sprite_dataset, sprite_pictures, tmp_path, monkeypatch):
    import cn_clip_pokemon.builder.build as build

    out = tmp_path / "pokemon"
    shutil.copytree(sprite_dataset, out)
    before = (out / "dataset_info.json").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(build, "write_info", fail)  # after every picture is written
    with pytest.raises(UserError, match=r"\(disk full\); the previous dataset in .* is as it was"):
        build_dataset(sprite_pictures, out, image_size=32, workers=1, progress=False)
    assert (out / "dataset_info.json").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pokemon"]


def test_refuses_to_replace_a_folder_it_did_not_build(sprite_pictures, tmp_path):
    out = tmp_path / "important"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a dataset"):
        build_dataset(sprite_pictures, out, progress=False)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_empty_or_missing_input_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no pictures found"):
        build_dataset(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="not a folder"):
        build_dataset(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "0001妙蛙种子.png").write_bytes(b"")
    with pytest.raises(UserError, match="none of the 1 pictures"):
        build_dataset(tmp_path / "junk", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_split_by_pokemon_keeps_each_pokemon_in_one_split(sprite_pictures, tmp_path):
    summary = build_dataset(sprite_pictures, tmp_path / "out", image_size=16, split_by="pokemon",
                            valid_fraction=0.2, test_fraction=0.2, seed=3, progress=False)
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text(encoding="utf-8"))
    split_of = {}
    for image in info["images"].values():
        assert split_of.setdefault(image["number"], image["split"]) == image["split"]
    assert sorted(set(split_of.values())) == sorted(SPLITS)
    assert summary["split_by"] == "pokemon"


def test_auto_split_is_by_pokemon_for_one_picture_each(sprite_pictures, tmp_path):
    flat = copy_sprites(sprite_pictures, tmp_path / "flat", {
        f"{number:04d}.png": f"{folder.name}/front_00.png"
        for number, folder in enumerate(sorted(p for p in sprite_pictures.iterdir() if p.is_dir()), 1)
    })
    summary = build_dataset(flat, tmp_path / "out", image_size=16, progress=False)
    assert summary["split_by"] == "pokemon" and summary["splits"]["train"]["images"] >= 15


def assign_splits(pictures, valid_fraction, test_fraction, seed):
    """The builder's view splits over pictures of several Pokemon, each Pokemon dealt on its own."""
    by_number = {}
    for index, picture in enumerate(pictures):
        by_number.setdefault(picture.number, []).append(index)
    splits = [None] * len(pictures)
    for indices in by_number.values():
        for index, split in zip(indices, view_splits([pictures[i] for i in indices], valid_fraction, test_fraction, seed)):
            splits[index] = split
    return splits


def test_view_splits_are_seeded_and_stable():
    pictures = [Picture(Path(f"{n}/{v}.png"), f"{n}/{v}.png", n, str(n), str(v)) for n in range(1, 41) for v in range(10)]
    first = assign_splits(pictures, 0.1, 0.2, seed=7)
    assert first == assign_splits(pictures, 0.1, 0.2, seed=7)
    assert first != assign_splits(pictures, 0.1, 0.2, seed=8)
    assert abs(first.count("test") - 80) <= 15 and abs(first.count("valid") - 40) <= 12
    # Adding Pokemon does not move the pictures of the others.
    fewer = assign_splits(pictures[:200], 0.1, 0.2, seed=7)
    assert fewer == first[:200]
    # A Pokemon with a single picture keeps it for training.
    assert assign_splits(pictures[:1], 0.5, 0.4, seed=0) == ["train"]


def test_templates_make_one_text_per_name_and_template(sprite_pictures, tmp_path):
    templates = ["{}", "一张{}的图片"]
    summary = build_dataset(sprite_pictures, tmp_path / "out", image_size=16, templates=templates, progress=False)
    texts = [json.loads(line) for line in (tmp_path / "out" / "train_texts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert texts[0]["text"] == "妙蛙种子" and texts[1]["text"] == "一张妙蛙种子的图片"
    assert texts[0]["image_ids"] == texts[1]["image_ids"] and texts[0]["text_id"] != texts[1]["text_id"]
    assert summary["splits"]["train"]["pairs"] == 2 * summary["splits"]["train"]["images"]
    assert len(read_pairs(tmp_path / "out", "train")) == summary["splits"]["train"]["pairs"]
    with pytest.raises(UserError, match="exactly one"):
        build_dataset(sprite_pictures, tmp_path / "out2", templates=["没有名字"], progress=False)


def test_names_that_tokenize_identically_are_refused(sprite_pictures, tmp_path):
    from cn_clip_pokemon.pokedex import Pokedex

    pokedex = Pokedex([{"number": 1, "zh_hans": "狃拉", "zh_hant": ""}, {"number": 2, "zh_hans": "犽拉", "zh_hant": ""}])
    folder = copy_sprites(sprite_pictures, tmp_path / "imgs", {
        "0001狃拉.png": "0001妙蛙种子/front_00.png", "0002犽拉.png": "0002妙蛙草/front_00.png"})
    with pytest.raises(UserError, match="狃拉 = 犽拉"):
        build_dataset(folder, tmp_path / "out", pokedex=pokedex, progress=False)


def test_one_process_and_two_write_the_same_dataset(sprite_pictures, tmp_path, capsys):
    build_dataset(sprite_pictures, tmp_path / "one", image_size=16, workers=1, progress=False)
    assert cli_main(["build-dataset", "--images", str(sprite_pictures), "--out", str(tmp_path / "two"),
                     "--image-size", "16", "--workers", "2", "--no-progress"]) == 0
    assert "built" in capsys.readouterr().out
    for name in [f"{split}_{kind}" for split in SPLITS for kind in ("imgs.tsv", "texts.jsonl")] + ["dataset_info.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_full_lmdb_map_grows_and_a_large_pokemon_spills_to_disk(sprite_pictures, tmp_path, monkeypatch):
    import cn_clip_pokemon.builder.writers as writers

    build_dataset(sprite_pictures, tmp_path / "roomy", image_size=48, workers=1, progress=False)
    # A map far too small for one split, and each Pokemon's pictures spilled to a file after 1 KiB.
    monkeypatch.setattr(writers, "INITIAL_MAP_SIZE", 64 << 10)
    monkeypatch.setattr(writers, "GROUP_MEMORY", 1 << 10)
    spools = []
    temporary_file = writers.tempfile.TemporaryFile

    def recorded_file(*args, **kwargs):
        spools.append(temporary_file(*args, **kwargs))
        return spools[-1]

    monkeypatch.setattr(writers.tempfile, "TemporaryFile", recorded_file)
    build_dataset(sprite_pictures, tmp_path / "tight", image_size=48, workers=1, progress=False)
    pokemon = len([folder for folder in sprite_pictures.iterdir() if folder.is_dir()])
    assert len(spools) == pokemon  # every Pokemon went through a file
    for split in SPLITS:
        assert read_lmdb(tmp_path / "tight" / "lmdb" / split / "imgs") == read_lmdb(tmp_path / "roomy" / "lmdb" / split / "imgs")
        name = f"{split}_imgs.tsv"
        assert (tmp_path / "tight" / name).read_bytes() == (tmp_path / "roomy" / name).read_bytes()
    tight = lmdb.open(str(tmp_path / "tight" / "lmdb" / "train" / "imgs"), readonly=True, lock=False)
    assert tight.info()["map_size"] > 64 << 10
    tight.close()


def test_a_pokemon_in_folders_and_flat_files_is_dealt_as_one(sprite_pictures, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sprite_pictures / "0025皮卡丘", mixed / "0025皮卡丘")
    shutil.copytree(sprite_pictures / "0004小火龙", mixed / "0004小火龙")
    # Flat files of the same Pokemon that sort far from their folder by path.
    shutil.copy(sprite_pictures / "0001妙蛙种子" / "front_00.png", mixed / "皮卡丘_flat.png")
    shutil.copy(sprite_pictures / "0007杰尼龟" / "front_00.png", mixed / "小火龙.png")
    build_dataset(mixed, tmp_path / "out", image_size=16, valid_fraction=0.2, test_fraction=0.2, progress=False)
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text(encoding="utf-8"))
    images = sorted(info["images"].items(), key=lambda item: int(item[0]))
    # Image ids run Pokemon by Pokemon, each Pokemon's pictures in path order.
    order = [(entry["number"], entry["source"]) for _, entry in images]
    assert order == sorted(order) and {number for number, _ in order} == {4, 25}
    # Each Pokemon's splits are dealt over all its pictures, wherever they were in the folder.
    for number in (4, 25):
        ours = [entry for _, entry in images if entry["number"] == number]
        pictures = [Picture("", entry["source"], number, entry["name"], entry["view"]) for entry in ours]
        assert [entry["split"] for entry in ours] == assign_splits(pictures, 0.2, 0.2, seed=0)
        assert {"train", "test"} <= {entry["split"] for entry in ours}


def test_the_summary_warns_about_an_empty_split_and_counts_one_process(tmp_path, capsys):
    from PIL import Image

    pictures = tmp_path / "imgs"
    pictures.mkdir()
    for name, colour in (("0001妙蛙种子.png", "green"), ("0004小火龙.png", "orange"), ("0007杰尼龟.png", "blue")):
        Image.new("RGB", (20, 20), colour).save(pictures / name)
    assert cli_main(["build-dataset", "--images", str(pictures), "--out", str(tmp_path / "out"), "--image-size", "16",
                     "--workers", "1", "--valid-fraction", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 process)" in out and "1 processes" not in out
    assert "warning: the valid split is empty" in out
    assert "warning: the train split is empty" not in out


def test_dataset_info_is_parsed_once_while_unchanged(tmp_path):
    """Every reader (launcher, dataset plugin at each epoch, demo) shares one parse of an unchanged
    dataset_info.json; a changed file is read again, a broken one is a one-line error with the advice."""
    import os

    from cn_clip_pokemon.dataset_format import read_dataset_info

    path = tmp_path / "dataset_info.json"
    path.write_text('{"image_size": 32}', encoding="utf-8")
    first = read_dataset_info(tmp_path)
    assert first == {"image_size": 32} and read_dataset_info(path) is first
    path.write_text('{"image_size": 640}', encoding="utf-8")
    os.utime(path, ns=(1, 1))
    assert read_dataset_info(path) == {"image_size": 640}
    path.write_text('{"image_size": ', encoding="utf-8")
    with pytest.raises(UserError, match="dataset_info.json is not valid JSON.*; rebuild it now"):
        read_dataset_info(path, "rebuild it now")
