"""build-dataset from any captions: --any-names folders and --manifest files (CSV, TSV, JSONL).

Every dataset is read back with upstream's own LMDBDataset; the last test trains on one through the
real `cn-clip-pokemon train`, then evaluates and searches it.
"""
import json
import os
import pickle
import random
import subprocess

import lmdb
import pytest
from PIL import Image

from cn_clip_pokemon.dataset_format import SPLITS
from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.default_plugins.pokemon_dataset import pair_groups
from cn_clip_pokemon.sampler import UniqueGroupBatchSampler

from conftest import cpu_env, random_checkpoint, read_metrics, run, train_command


def picture(path, seed, size=(24, 24)):
    """A picture no other seed gives (random pixels), so none is dropped as a duplicate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(repr(seed))
    Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))).save(path)
    return path


def build(*args):
    return cli_main(["build-dataset", *map(str, args), "--image-size", "32", "--workers", "1", "--no-progress"])


def read_info(dataset):
    return json.loads((dataset / "dataset_info.json").read_text(encoding="utf-8"))


def read_back(dataset):
    """``[(image_id, text)]`` of every split, each pair read by upstream's LMDBDataset too."""
    from cn_clip.clip import _tokenizer
    from cn_clip.training.data import LMDBDataset

    info = read_info(dataset)
    pairs = []
    for split in SPLITS:
        if not info["splits"][split]["pairs"]:
            continue
        upstream = LMDBDataset(str(dataset / "lmdb" / split), split=split, max_txt_length=24, resolution=32)
        assert len(upstream) == info["splits"][split]["pairs"]
        for index in range(len(upstream)):
            image, text, eos_index = upstream[index]
            assert tuple(image.shape) == (3, 32, 32) and text[eos_index] == _tokenizer.vocab["[SEP]"]
        env = lmdb.open(str(dataset / "lmdb" / split / "pairs"), readonly=True, lock=False)
        with env.begin() as txn:
            for index in range(int(txn.get(b"num_samples"))):
                image_id, _text_id, text = pickle.loads(txn.get(str(index).encode()))
                assert info["images"][str(image_id)]["split"] == split
                pairs.append((image_id, text))
        env.close()
    return pairs


def captions_by_source(info):
    return {entry["source"]: entry["captions"] for entry in info["images"].values()}


# ---------------------------------------------------------------- --any-names


@pytest.fixture
def named_folder(tmp_path):
    imgs = tmp_path / "imgs"
    picture(imgs / "红色圆形.png", 1)
    picture(imgs / "綠色三角.jpg", 2)  # traditional: becomes 绿色三角
    picture(imgs / "0001星星.png", 3)  # no number needed, and none is taken off
    for index, inner in enumerate(("1.png", "2.png", "sub/3.png")):  # a folder: several pictures of one caption
        picture(imgs / "蓝色方块" / inner, (4, index))
    picture(imgs / ".hidden.png", 5)
    picture(imgs / " .png", 6)  # nothing left once the extension is gone
    picture(imgs / "响\x07铃.png", 7)  # a control character
    picture(imgs / os.fsdecode(b"\xff.png"), 8)
    (imgs / "空文件夹").mkdir()
    return imgs


def test_any_names_takes_file_and_folder_names_as_captions(named_folder, tmp_path):
    out = tmp_path / "ds"
    assert build("--any-names", "--images", named_folder, "--out", out) == 0
    info = read_info(out)
    assert info["naming"] == "any-names"
    assert sorted(info["names"]) == sorted(["红色圆形", "绿色三角", "0001星星", "蓝色方块"])
    by_source = captions_by_source(info)
    assert by_source["綠色三角.jpg"] == ["绿色三角"] and by_source["0001星星.png"] == ["0001星星"]
    # one group per caption: the folder's three pictures share one, every caption has its own
    numbers = {entry["source"]: entry["number"] for entry in info["images"].values()}
    assert numbers["蓝色方块/1.png"] == numbers["蓝色方块/2.png"] == numbers["蓝色方块/sub/3.png"]
    assert len(set(numbers.values())) == info["groups"] == 4
    # every entry accounted for
    assert info["counts"] == {"built": 6, "skipped": 5, "skipped_by_kind": {
        "empty folder": 1, "hidden": 1, "name not UTF-8": 1, "no caption": 2}}
    reasons = {entry["file"]: entry["reason"] for entry in info["skipped"]}
    assert "empty" in reasons[" .png"] and "control character" in reasons["响\\x07铃.png"]
    pairs = read_back(out)
    assert sorted(text for _, text in pairs) == sorted(caption for captions in by_source.values() for caption in captions)
    for image_id, text in pairs:
        assert info["images"][str(image_id)]["captions"] == [text]


def test_any_names_no_t2s_keeps_traditional_captions(named_folder, tmp_path, capsys):
    out = tmp_path / "ds"
    assert build("--any-names", "--no-t2s", "--images", named_folder, "--out", out, "--template", "一张{}的图片") == 0
    info = read_info(out)
    assert "綠色三角" in info["names"] and "绿色三角" not in info["names"]
    assert "一张綠色三角的图片" in {text for _, text in read_back(out)}
    assert "4 captions in 4 groups" in capsys.readouterr().out


# ---------------------------------------------------------------- --manifest


def write_manifest(folder, kind):
    """A manifest in lists/, naming pictures in ../pics/ (relative to the manifest), with bad rows.

    Returns its path and ``{line: kind}`` of the rows that must be skipped.
    """
    pics = folder / "pics"
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3), ("e.png", 5), ("f.png", 6)):
        picture(pics / name, seed)
    lists = folder / "lists"
    lists.mkdir()
    manifest = lists / f"manifest.{kind}"
    if kind == "jsonl":
        lines = [
            json.dumps({"path": "../pics/a.png", "caption": ["红色圆形", "一個紅圈"]}, ensure_ascii=False),
            json.dumps({"filepath": "../pics/b.png", "title": "蓝色方块"}, ensure_ascii=False),  # open_clip's names
            "",
            json.dumps({"path": "../pics/c.png", "caption": "绿色三角"}, ensure_ascii=False),
            json.dumps({"path": "../pics/missing.png", "caption": "不存在"}, ensure_ascii=False),
            json.dumps({"path": "../pics/f.png", "caption": "  "}, ensure_ascii=False),
            "{oops",
            json.dumps({"path": "../pics/a.png", "caption": "红色圆形"}, ensure_ascii=False),
            json.dumps({"path": "../pics/f.png", "caption": 7}),
        ]
        data = "\n".join(lines).encode("utf-8") + b"\n" + '{"path": "../pics/e.png", "caption": "'.encode() + "啊".encode("gbk") + b'"}\n'
        bad = {5: "missing file", 6: "no caption", 7: "bad manifest row", 8: "repeated row", 9: "bad manifest row",
               10: "bad manifest row"}
    else:
        separator = "," if kind == "csv" else "\t"
        header = ["path", "caption", "note"] if kind == "csv" else ["filepath", "title"]  # TSV: open_clip's names
        rows = [
            ["../pics/a.png", "红色圆形"],
            ["../pics/b.png", "蓝色方块"],
            ["../pics/a.png", "一個紅圈"],  # a second caption of a.png
            ["../pics/c.png", "绿色三角"],
            ["../pics/missing.png", "不存在"],
            ["../pics/f.png", ""],
            ["./../pics/a.png", "红色圆形"],  # the same picture and caption again
        ]
        text = "\n".join(separator.join(row) for row in [header] + rows) + "\n"
        data = "\ufeff".encode("utf-8") + text.encode("utf-8") + b"../pics/e.png" + separator.encode() + "啊".encode("gbk") + b"\n"
        bad = {6: "missing file", 7: "no caption", 8: "repeated row", 9: "bad manifest row"}
    manifest.write_bytes(data)
    return manifest, bad


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_manifest_rows_with_several_captions_and_bad_rows(kind, tmp_path, capsys):
    manifest, bad = write_manifest(tmp_path, kind)
    out = tmp_path / "ds"
    assert build("--manifest", manifest, "--out", out) == 0
    printed = capsys.readouterr().out
    info = read_info(out)
    assert info["naming"] == "manifest"
    assert {entry["file"]: entry["kind"] for entry in info["skipped"]} == {f"manifest.{kind}:{line}": what for line, what in bad.items()}
    assert f"manifest.{kind}:{min(bad)}: ../pics/missing.png: no such file" in printed
    by_source = captions_by_source(info)
    # paths as written, relative to the manifest; a picture's captions in row order, traditional converted
    assert by_source == {"../pics/a.png": ["红色圆形", "一个红圈"], "../pics/b.png": ["蓝色方块"], "../pics/c.png": ["绿色三角"]}
    numbers = {entry["source"]: entry["number"] for entry in info["images"].values()}
    assert len(set(numbers.values())) == 3
    pairs = read_back(out)
    ids = {entry["source"]: int(image_id) for image_id, entry in info["images"].items()}
    assert sorted(pairs) == sorted([(ids["../pics/a.png"], "红色圆形"), (ids["../pics/a.png"], "一个红圈"),
                                    (ids["../pics/b.png"], "蓝色方块"), (ids["../pics/c.png"], "绿色三角")])


def test_manifest_groups_pictures_that_share_captions(tmp_path):
    """A picture never meets itself, nor a caption meets itself, in a batch: shared captions make one group."""
    pics = tmp_path / "pics"
    for name, seed in (("x.png", 1), ("y.png", 2), ("z.png", 3), ("u.png", 4), ("v.png", 5)):
        picture(pics / name, seed)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,caption\npics/x.png,猫\npics/x.png,小猫\npics/y.png,猫\npics/z.png,狗\n"
                        "pics/u.png,ABC\npics/v.png,abc\n", encoding="utf-8")
    out = tmp_path / "ds"
    assert build("--manifest", manifest, "--out", out, "--valid-fraction", "0", "--test-fraction", "0") == 0
    info = read_info(out)
    number = {entry["source"]: entry["number"] for entry in info["images"].values()}
    assert number["pics/x.png"] == number["pics/y.png"] != number["pics/z.png"]
    # upstream lower-cases texts: ABC and abc are one text to the model, so one group, and listed
    assert number["pics/u.png"] == number["pics/v.png"] != number["pics/z.png"]
    assert info["captions_tokenizing_identically"] == [["ABC", "abc"]]
    assert info["groups"] == 3
    groups = pair_groups(out / "lmdb" / "train")
    pairs = read_back(out)
    group_of = {}
    for (image_id, text), group in zip(pairs, groups):
        group_of.setdefault(info["images"][str(image_id)]["source"], set()).add(group)
    assert group_of["pics/x.png"] == group_of["pics/y.png"] and len(group_of["pics/x.png"]) == 1
    assert group_of["pics/z.png"] != group_of["pics/x.png"]


def test_manifest_errors_are_one_line_naming_file_and_line(tmp_path, capsys):
    picture(tmp_path / "a.png", 1)
    out = tmp_path / "ds"

    def error_of(*args, code=1):
        assert build(*args) == code
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "no-such.csv" in error_of("--manifest", tmp_path / "no-such.csv", "--out", out)
    (tmp_path / "folder.csv").mkdir()
    assert "is a folder" in error_of("--manifest", tmp_path / "folder.csv", "--out", out)
    (tmp_path / "m.txt").write_text("path,caption\na.png,红色\n", encoding="utf-8")
    assert ".csv, .tsv or .jsonl" in error_of("--manifest", tmp_path / "m.txt", "--out", out)
    (tmp_path / "cols.csv").write_text("file,text\na.png,红色\n", encoding="utf-8")
    assert "cols.csv:1: the first line must name the columns path,caption" in error_of("--manifest", tmp_path / "cols.csv", "--out", out)
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    assert "empty.tsv" in error_of("--manifest", tmp_path / "empty.tsv", "--out", out)
    (tmp_path / "m.csv").write_text("path,caption\na.png,红色\nb.png,蓝色\n", encoding="utf-8")
    assert error_of("--manifest", tmp_path / "m.csv", "--out", out, "--strict").endswith("m.csv:3: b.png: no such file (--strict)")
    (tmp_path / "none.csv").write_text("path,caption\nb.png,蓝色\n", encoding="utf-8")
    assert build("--manifest", tmp_path / "none.csv", "--out", out) == 1
    # nothing to build: every skipped row listed, then the one-line error
    listed, message = capsys.readouterr().err.strip().split("cn-clip-pokemon: error: ")
    assert "none.csv:2: b.png: no such file" in listed and "\n" not in message.strip()
    assert "none.csv:2 (b.png: no such file)" in message and "caption" in message
    # bad usage: exit 2 before anything is read
    assert "--any-names" in error_of("--any-names", "--manifest", tmp_path / "m.csv", "--out", out, code=2)
    assert "--no-t2s" in error_of("--no-t2s", "--images", tmp_path, "--out", out, code=2)
    assert "--manifest" in error_of("--out", out, code=2)
    assert not out.exists()


def test_the_pokedex_stays_the_default(tmp_path):
    picture(tmp_path / "imgs" / "0025皮卡丘.png", 1)
    picture(tmp_path / "imgs" / "红色圆形.png", 2)
    assert build("--images", tmp_path / "imgs", "--out", tmp_path / "ds") == 0
    info = read_info(tmp_path / "ds")
    assert info["naming"] == "pokedex" and info["names"] == ["皮卡丘"]
    assert [entry["kind"] for entry in info["skipped"]] == ["not a Pokemon name"]
    assert "captions" not in info["images"]["0"]


# ---------------------------------------------------------------- training, evaluating, searching


def test_any_captions_dataset_trains_evaluates_and_searches(runner, tmp_path):  # noqa: F811
    captions = ["红色圆形", "蓝色方块", "绿色三角", "黄色星星", "黑色线条", "白色云朵", "紫色花朵", "橙色月亮"]
    imgs = tmp_path / "imgs"
    for caption in captions:
        for view in range(3):
            picture(imgs / caption / f"{view}.png", (caption, view))
    dataset = tmp_path / "ds"
    assert build("--any-names", "--images", imgs, "--out", dataset, "--valid-fraction", "0.34", "--test-fraction", "0") == 0
    info = read_info(dataset)
    assert info["split_by"] == "view" and info["splits"]["valid"]["pairs"] > 0

    logs = tmp_path / "logs"
    result = run(train_command(runner, dataset / "lmdb" / "train", logs, "--max-epochs", "2", "--precision", "fp32",
                               val_data=dataset / "lmdb" / "valid"))
    # trained through the pokemon dataset plugin, whose batches never repeat a caption group
    params = "".join(path.read_text(encoding="utf-8") for path in (logs / "run").glob("params_*.txt"))
    assert "dataset: pokemon" in params.splitlines()
    groups = pair_groups(dataset / "lmdb" / "train")
    sampler = UniqueGroupBatchSampler(groups, batch_size=8, num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(1)
    pairs = read_back(dataset)[: len(groups)]  # the train split's pairs come first
    for batch in sampler:
        assert len({groups[index] for index in batch}) == len(batch)
        assert len({pairs[index][1] for index in batch}) == len({pairs[index][0] for index in batch}) == len(batch)
    metrics = read_metrics(logs)
    assert [m["epoch"] for m in metrics if m.get("epoch_end")] == [1, 2]
    checkpoint = logs / "run" / "checkpoints" / "epoch_latest.pt"

    done = subprocess.run(
        [*run_prefix(runner), "evaluate", "--checkpoint", str(checkpoint), "--dataset", str(dataset),
         "--split", "valid", "--device", "cpu", "--json"],
        env=cpu_env(), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads(done.stdout)
    assert evaluated["names"] == len(captions)  # classified among every caption
    assert 0 <= evaluated["zero_shot"]["top1"] <= evaluated["zero_shot"]["top5"] <= 100
    assert evaluated["text_to_image"]["queries"] == len(captions)

    done = subprocess.run(
        [*run_prefix(runner), "search", "紅色圓形", "--checkpoint", str(checkpoint), "--dataset", str(dataset),
         "--split", "train", "--device", "cpu", "--json", "--top-k", "3"],
        env=cpu_env(), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert len(found["results"]) == 3 and all(result["name"] in captions for result in found["results"])


def run_prefix(runner):  # noqa: F811
    import sys

    return [sys.executable, str(runner)]


def test_manifest_rows_inside_out_are_not_read(tmp_path):
    picture(tmp_path / "a.png", 1)
    out = tmp_path / "ds"
    assert build("--manifest", _manifest(tmp_path, ["a.png"]), "--out", out) == 0
    # a row pointing into the dataset that the build replaces
    assert build("--manifest", _manifest(tmp_path, ["a.png", "ds/train_imgs.tsv"]), "--out", out) == 0
    assert {entry["file"]: entry["kind"] for entry in read_info(out)["skipped"]} == {"m.csv:3": "inside --out"}


def _manifest(folder, paths):
    manifest = folder / "m.csv"
    manifest.write_text("path,caption\n" + "".join(f"{path},描述{index}\n" for index, path in enumerate(paths)), encoding="utf-8")
    return manifest


def test_manifest_fifo_folder_and_loop_rows_are_skipped(tmp_path):
    picture(tmp_path / "a.png", 1)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    os.symlink("loop.png", tmp_path / "loop.png")
    out = tmp_path / "ds"
    assert build("--manifest", _manifest(tmp_path, ["a.png", "fifo.png", "folder.png", "loop.png"]), "--out", out) == 0
    kinds = {entry["file"]: entry["kind"] for entry in read_info(out)["skipped"]}
    assert kinds == {"m.csv:3": "not a regular file", "m.csv:4": "not a regular file", "m.csv:5": "symlink loop"}


def test_evaluate_and_search_label_a_picture_with_each_of_its_captions(tmp_path):
    from cn_clip_pokemon.evaluation import evaluate
    from cn_clip_pokemon.search import search

    manifest, _ = write_manifest(tmp_path, "csv")
    dataset = tmp_path / "ds"
    assert build("--manifest", manifest, "--out", dataset, "--valid-fraction", "0", "--test-fraction", "0") == 0
    checkpoint = random_checkpoint(tmp_path / "model" / "epoch_latest.pt", seed=3)
    result = evaluate(checkpoint, dataset, split="train", device="cpu", progress=False, keep_scores=True)
    assert result["names"] == 4  # every caption is a candidate
    assert result["text_to_image"]["queries"] == 4 and result["image_to_text"]["queries"] == 3
    # a.png is right under either of its captions, so top-5 among 4 names always hits
    assert result["zero_shot"]["top5"] == 100.0
    found = search(checkpoint, dataset, query="紅色圓形", split="train", device="cpu", progress=False, top_k=3)
    assert "红色圆形 / 一个红圈" in {item["name"] for item in found["results"]}
