"""classify and search: the same numbers as the seed's encode-everything way, cached name and
picture embeddings, transparency on white, and the text / JSON / grid outputs of the commands."""
import base64
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip import tokenize  # noqa: E402
from cn_clip.clip.model import CLIP  # noqa: E402
from PIL import Image  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon.classify import Classifier, candidate_names, classify  # noqa: E402
from cn_clip_pokemon.encoding import fill_templates  # noqa: E402
from cn_clip_pokemon.search import search  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from cn_clip_pokemon.pokedex import Pokedex  # noqa: E402
from conftest import random_checkpoint  # noqa: E402

NAMES = ["妙蛙种子", "小火龙", "杰尼龟", "皮卡丘", "喷火龙"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Our tiny registered architecture (64 px, like the sprite dataset), random weights."""
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch_latest.pt")


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """A private copy, so each test starts without a cache."""
    path = tmp_path / "epoch_latest.pt"
    path.write_bytes(tiny_checkpoint.read_bytes())
    return path


@pytest.fixture
def encode_counts(monkeypatch):
    """Counts the texts and pictures the model encodes."""
    counts = {"texts": 0, "pictures": 0}
    encode_text, encode_image = CLIP.encode_text, CLIP.encode_image

    def counting_text(self, text):
        counts["texts"] += text.shape[0]
        return encode_text(self, text)

    def counting_image(self, image, mask_ratio=0):
        counts["pictures"] += image.shape[0]
        return encode_image(self, image, mask_ratio)

    monkeypatch.setattr(CLIP, "encode_text", counting_text)
    monkeypatch.setattr(CLIP, "encode_image", counting_image)
    return counts


def sprite_on_transparency(path, color=(200, 40, 40)):
    """An RGBA picture: a coloured disc on a fully transparent background whose hidden RGB is black."""
    picture = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    for x in range(40):
        for y in range(30):
            if (x - 20) ** 2 + (y - 15) ** 2 < 100:
                picture.putpixel((x, y), color + (255,))
    picture.save(path)
    return path


def seed_way(model, preprocess, image, names):
    """The seed's inference: encode every name on each call, softmax over logit_scale * cosine."""
    with torch.no_grad():
        image_features, text_features, scale = model(preprocess(image).unsqueeze(0), tokenize(names))
        return (scale * image_features @ text_features.T).softmax(dim=-1)[0]


def test_probabilities_match_the_seed_way_and_transparency_goes_white(checkpoint_copy, tmp_path):
    picture = sprite_on_transparency(tmp_path / "disc.png")
    classifier = Classifier(checkpoint_copy, names=NAMES, device="cpu", progress=False)
    [result] = classifier.classify_paths([picture], top_k=len(NAMES))
    got = {p["name"]: p["probability"] for p in result["predictions"]}
    assert [p["name"] for p in result["predictions"]] == sorted(got, key=got.get, reverse=True)
    assert [p["number"] for p in result["predictions"]] == [Pokedex.load().number(p["name"]) for p in result["predictions"]]

    model, preprocess = ckpt.load_model(checkpoint_copy, device="cpu")
    on_white = Image.new("RGB", (40, 40), (255, 255, 255))
    on_white.paste(Image.open(picture), (0, 5), Image.open(picture))
    expected = seed_way(model, preprocess, on_white, NAMES)
    for name, probability in zip(NAMES, expected.tolist()):
        assert got[name] == pytest.approx(probability, abs=1e-5)

    # the seed's Image.open(...).convert("RGB") sees a black background: a different picture
    black = seed_way(model, preprocess, Image.open(picture).convert("RGB").crop((0, -5, 40, 35)), NAMES)
    assert not torch.allclose(black, expected, atol=1e-4)


def test_second_call_encodes_only_the_pictures(checkpoint_copy, tmp_path, encode_counts):
    picture = sprite_on_transparency(tmp_path / "disc.png")
    first = classify([picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    assert encode_counts == {"texts": len(NAMES), "pictures": 1}
    cached = list((tmp_path / "epoch_latest.pt.cache").glob("names-*.pt"))
    assert len(cached) == 1
    assert not [p for p in cached[0].parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    second = classify([picture, picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    assert encode_counts == {"texts": len(NAMES), "pictures": 3}
    for again in second:  # same answer (up to float rounding: a batch of 2 sums in another order)
        assert [p["name"] for p in again["predictions"]] == [p["name"] for p in first[0]["predictions"]]
        assert [p["probability"] for p in again["predictions"]] == pytest.approx([p["probability"] for p in first[0]["predictions"]], abs=1e-6)

    # templates and names are part of the key: a new set is encoded once more
    classify([picture], checkpoint_copy, names=NAMES, templates=["一张{}的图片"], device="cpu", progress=False)
    assert encode_counts["texts"] == 2 * len(NAMES)
    classify([picture], checkpoint_copy, names=NAMES[:3], device="cpu", progress=False)
    assert encode_counts["texts"] == 2 * len(NAMES) + 3


def test_new_weights_at_the_same_path_are_not_served_stale_names(checkpoint_copy, tmp_path, encode_counts):
    picture = sprite_on_transparency(tmp_path / "disc.png")
    before = classify([picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    random_checkpoint(checkpoint_copy, seed=5)
    after = classify([picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    assert encode_counts["texts"] == 2 * len(NAMES)
    assert before != after


def test_names_from_file_are_simplified_and_deduplicated(tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("# candidates\n皮卡丘\n\n噴火龍\n皮卡丘\n", encoding="utf-8")
    assert candidate_names(["杰尼龜,皮卡丘"], names_file) == ["杰尼龟", "皮卡丘", "喷火龙"]
    assert len(candidate_names()) == 1025
    with pytest.raises(UserError, match="cannot read the names file"):
        candidate_names(None, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(UserError, match="no candidate names"):
        candidate_names(None, tmp_path / "empty.txt")


def test_classify_command_text_json_and_grid(checkpoint_copy, tmp_path, capsys):
    pictures = [sprite_on_transparency(tmp_path / "red.png"), sprite_on_transparency(tmp_path / "blue.png", (30, 60, 220))]
    grid = tmp_path / "grid.png"
    base = ["classify", *map(str, pictures), "--checkpoint", str(checkpoint_copy), "--device", "cpu"]

    assert main(base + ["--names", *NAMES, "--top-k", "3", "--out", str(grid)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == str(pictures[0]) and text[4] == str(pictures[1])
    percents = [float(line.split("%")[0]) for line in text[1:4]]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.01
    with Image.open(grid) as sheet:
        assert sheet.format == "PNG" and sheet.width >= 2 * 128

    # JSON over all 1025 Pokemon (the default names)
    assert main(base + ["--json", "--top-k", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["names"] == 1025 and report["templates"] == ["{}"]
    first = report["results"][0]["predictions"]
    assert len(first) == 5 and all(isinstance(p["number"], int) for p in first)
    assert first == sorted(first, key=lambda p: p["probability"], reverse=True)

    # a picture that cannot be read: the others are still classified, exit 1, one line on stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(base[:1] + [str(broken)] + base[1:] + ["--names", *NAMES, "--json"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert "error" in results[0] and len(results[1]["predictions"]) == 5
    assert "broken.png" in captured.err and "Traceback" not in captured.err


def _picture_of(dataset, split, image_id, path):
    """Write a stored picture of a split to ``path`` (decoded as upstream's LMDBDataset does)."""
    for line in (dataset / f"{split}_imgs.tsv").read_text(encoding="utf-8").splitlines():
        stored_id, encoded = line.split("\t")
        if int(stored_id) == image_id:
            path.write_bytes(base64.urlsafe_b64decode(encoded))
            return path
    raise AssertionError(f"no picture {image_id}")


def test_search_by_text_and_by_picture_with_cached_split(sprite_dataset, checkpoint_copy, tmp_path, encode_counts, capsys):
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    test_ids = sorted(int(i) for i, entry in info["images"].items() if entry["split"] == "test")

    found = search(checkpoint_copy, sprite_dataset, query="小火龍", split="test", top_k=5, device="cpu", progress=False)
    assert found["query"] == "小火龙"  # traditional input, simplified like the training texts
    assert len(found["results"]) == 5 and {r["image_id"] for r in found["results"]} <= set(test_ids)
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["name"] == info["images"][str(r["image_id"])]["name"] for r in found["results"])
    assert encode_counts == {"texts": 1, "pictures": len(test_ids)}

    # picture -> similar pictures: its own stored copy comes first; the split is not encoded again
    chosen = test_ids[3]
    picture = _picture_of(sprite_dataset, "test", chosen, tmp_path / "query.png")
    grid = tmp_path / "found.png"
    assert main(["search", "--image", str(picture), "--checkpoint", str(checkpoint_copy), "--dataset", str(sprite_dataset),
                 "--top-k", "4", "--json", "--out", str(grid), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "picture" and report["results"][0]["image_id"] == chosen
    assert report["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert encode_counts == {"texts": 1, "pictures": len(test_ids) + 1}
    assert Image.open(grid).size[0] == 2 * (128 + 12)

    # the text form of the command
    assert main(["search", "妙蛙种子", "--checkpoint", str(checkpoint_copy), "--dataset", str(sprite_dataset), "--top-k", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("妙蛙种子") and len(lines) == 4


def test_search_reads_the_tsv_when_there_is_no_lmdb(sprite_dataset, checkpoint_copy, tmp_path):
    import shutil

    copy = tmp_path / "dataset"
    shutil.copytree(sprite_dataset, copy, ignore=shutil.ignore_patterns("lmdb"))
    from_tsv = search(checkpoint_copy, copy, query="杰尼龟", top_k=3, device="cpu", progress=False, cache=False)
    from_lmdb = search(checkpoint_copy, sprite_dataset, query="杰尼龟", top_k=3, device="cpu", progress=False, cache=False)
    assert from_tsv == from_lmdb


def test_search_errors(sprite_dataset, checkpoint_copy, tmp_path):
    with pytest.raises(UserError, match="no nosuch split"):
        search(checkpoint_copy, sprite_dataset, query="x", split="nosuch", device="cpu")
    with pytest.raises(UserError, match="does not exist"):
        search(checkpoint_copy, tmp_path / "none", query="x", device="cpu")
    # neither a text nor --image: bad usage, exit 2 like argparse's own errors
    assert main(["search", "--checkpoint", str(checkpoint_copy), "--dataset", str(sprite_dataset)]) == 2


def test_grid_captions_show_chinese(tmp_path):
    from PIL import ImageChops, ImageDraw

    from cn_clip_pokemon import grids

    font, has_cjk = grids.caption_font(14)
    if not has_cjk:
        pytest.skip("no font with Chinese glyphs on this machine (Debian: apt-get install fonts-wqy-microhei)")

    def drawn(text):
        canvas = Image.new("L", (40, 20), 255)
        ImageDraw.Draw(canvas).text((2, 2), text, font=font, fill=0)
        return canvas

    # a font without the glyphs draws the same empty box (or nothing) for both characters
    assert ImageChops.difference(drawn("皮"), drawn("卡")).getbbox() is not None
    assert drawn("皮").getextrema()[0] < 128

    cells = [(Image.new("RGBA", (30, 20), (0, 0, 0, 0)), ["皮卡丘 97.3%", "~雷丘 1.2%"]) for _ in range(3)]
    path = grids.save_grid(cells, tmp_path / "grid.png", columns=2, cell_size=64)
    with Image.open(path) as sheet:
        assert sheet.size == (2 * (64 + 12), 2 * (64 + 12 + 2 * 18))
        # transparent pictures land on white, never black
        assert sheet.getpixel((6 + 32, 6 + 32)) == (255, 255, 255)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_classify_refuses_a_template_without_one_place_for_the_name(tmp_path, capsys):
    for template in ("一张图片", "{}和{}"):
        assert main(["classify", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "m.pt"), "--template", template]) == 2
        assert f"template {template!r} must hold exactly one {{}}" in capsys.readouterr().err


@pytest.mark.parametrize("template", ["一张{}的{x}", "一张{}的图{", "{{}}", "一张}{}的图片", "一张{0}的图片"])
def test_templates_with_other_braces_are_refused_everywhere(template):
    from cn_clip_pokemon.dataset_format import check_templates, fill_template

    with pytest.raises(UserError, match="brace|exactly one") as error:
        check_templates([template])
    assert "\n" not in str(error.value)
    with pytest.raises(UserError):
        fill_template(template, "皮卡丘")
    with pytest.raises(UserError):
        fill_templates("皮卡丘", [template])


def test_a_template_fills_the_same_when_building_and_classifying(tmp_path):
    # the builder's texts and the classifier's are one function's output: no str.format anywhere
    from cn_clip.eval.data import _preprocess_text

    from cn_clip_pokemon.builder.build import build_dataset

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for number, name in ((1, "妙蛙种子"), (25, "皮卡丘"), (4, "小火龙")):
        Image.new("RGB", (16, 16), (number * 9, 80, 120)).save(pictures / f"{number:04d}{name}.png")
    templates = ["一张{}的图片", "这是{}"]
    build_dataset(pictures, tmp_path / "dataset", image_size=16, templates=templates, seed=0, progress=False)
    built = set()
    for split in ("train", "valid", "test"):
        path = tmp_path / "dataset" / f"{split}_texts.jsonl"
        if path.is_file():
            built |= {json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    for name in ("妙蛙种子", "皮卡丘", "小火龙"):
        for template, text in zip(templates, fill_templates(name, templates)):
            assert text == _preprocess_text(template.replace("{}", name))
            assert text in built


def _no_private_keys(value):
    """True when no dict anywhere in ``value`` has a key starting with "_"."""
    if isinstance(value, dict):
        return not any(str(key).startswith("_") for key in value) and all(_no_private_keys(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_no_private_keys(v) for v in value)
    return True


def test_results_carry_no_private_keys(sprite_dataset, checkpoint_copy, tmp_path):
    from cn_clip_pokemon.dataset_split import SplitPictures

    pictures = [sprite_on_transparency(tmp_path / "red.png"), tmp_path / "missing.png"]
    classifier = Classifier(checkpoint_copy, names=NAMES, device="cpu", progress=False)
    results = classifier.classify_paths(pictures, top_k=2)
    assert [set(r) for r in results] == [{"picture", "predictions"}, {"picture", "error"}]
    assert _no_private_keys(results)
    # the pictures classified come from their own method, for the grid, None where one could not be opened
    again, opened = classifier.classify_and_open(pictures, top_k=2)
    assert again == results and opened[0].mode == "RGB" and opened[1] is None
    assert _no_private_keys(classify(pictures[:1], checkpoint_copy, names=NAMES, device="cpu", progress=False))

    found = search(checkpoint_copy, sprite_dataset, query="皮卡丘", top_k=3, device="cpu", progress=False)
    assert set(found) == {"query", "number", "kind", "split", "results"} and _no_private_keys(found)

    # a caller's open split is searched and left open for it; search opens and closes none of its own
    with SplitPictures(sprite_dataset, "test") as split:
        mine = search(checkpoint_copy, None, query="皮卡丘", top_k=3, device="cpu", progress=False, pictures=split)
        assert mine == found
        assert split.picture(mine["results"][0]["image_id"]).mode == "RGB"


def test_search_names_the_picture_files(sprite_dataset, checkpoint_copy, tmp_path, capsys):
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    base = ["search", "小火龙", "--checkpoint", str(checkpoint_copy), "--dataset", str(sprite_dataset), "--top-k", "4", "--device", "cpu"]
    assert main(base + ["--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 4
    for result in results:
        entry = info["images"][str(result["image_id"])]
        assert result["picture"] == entry["source"] and result["name"] == entry["name"]
        assert result["picture"].endswith(".png") and "/" in result["picture"]  # <Pokemon folder>/<view>.png

    grid = tmp_path / "found.png"
    assert main(base + ["--out", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 4
    for line, result in zip(lines, results):
        assert f"  {result['picture']}  (image {result['image_id']})" in line
    with Image.open(grid) as sheet:  # the file name is a third caption line under each picture
        assert sheet.size[1] > 128 + 12 + 2 * 18


def test_search_without_dataset_info_shows_image_ids_only(sprite_dataset, checkpoint_copy, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(sprite_dataset, bare)
    (bare / "dataset_info.json").unlink()
    assert main(["search", "小火龙", "--checkpoint", str(checkpoint_copy), "--dataset", str(bare), "--top-k", "2", "--device", "cpu", "--json"]) == 0
    assert [r["picture"] for r in json.loads(capsys.readouterr().out)["results"]] == [None, None]


def test_the_cache_goes_under_the_cache_root_when_the_checkpoint_folder_is_read_only(checkpoint_copy, tmp_path, monkeypatch, encode_counts):
    import os

    from cn_clip_pokemon.embedding_cache import cache_dir_for
    from cn_clip_pokemon.files import cache_root

    # tests run as root, for whom chmod changes nothing: the checkpoint's folder says it is read-only
    folder = checkpoint_copy.parent.resolve()
    real_access = os.access

    def read_only_folder(path, mode, *args, **kwargs):
        if mode & os.W_OK and (folder == Path(path).resolve() or folder in Path(path).resolve().parents):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", read_only_folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    picture = sprite_on_transparency(tmp_path / "disc.png")  # beside the checkpoint: reading is allowed
    cache = cache_dir_for(checkpoint_copy)
    assert cache_root() == tmp_path / "xdg" / "cn-clip-pokemon"
    assert cache_root() in cache.parents
    classify([picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    assert len(list(cache.glob("names-*.pt"))) == 1
    assert not (folder / f"{checkpoint_copy.name}.cache").exists()
    classify([picture], checkpoint_copy, names=NAMES, device="cpu", progress=False)
    assert encode_counts["texts"] == len(NAMES)  # the second call read the names from there
