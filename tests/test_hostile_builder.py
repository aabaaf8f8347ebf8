"""build-dataset under hostile input: a standing corpus of bad entries, an --out that is not ours,
and builds killed (kill -9) at chosen points. Every build goes through the real command."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cn_clip_pokemon.builder.build import build_dataset
from cn_clip_pokemon.builder.output import OUTPUT_NAMES
from cn_clip_pokemon.dataset_format import SPLITS
from cn_clip_pokemon.safe_reading import printable
from conftest import png_header_only

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
# Root reads any file whatever its mode: the unreadable kinds then run through setpriv without the
# two capabilities that allow it, or not at all (and the test that needs them says so).
DROP_READ_ANYTHING = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                      "--bounding-set=-dac_override,-dac_read_search"]
IS_ROOT = os.geteuid() == 0
CAN_DENY_READING = not IS_ROOT or shutil.which("setpriv") is not None


def run_cli(*args, timeout=300):
    """``python -m cn_clip_pokemon build-dataset ...`` in a child process (as a user who cannot read mode 000)."""
    command = [sys.executable, "-m", "cn_clip_pokemon", "build-dataset", *map(str, args), "--no-progress"]
    if IS_ROOT and CAN_DENY_READING:
        command = DROP_READ_ANYTHING + command
    return subprocess.run(command, capture_output=True, text=True, errors="backslashreplace", cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def save_picture(path, index, mode="RGB", **save):
    """A small picture whose pixels no other index gives (so none is a duplicate of another)."""
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        image = Image.fromarray(pixels[:, :, 0].astype("<u2") * 257)
        assert image.mode == "I;16"
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        save.setdefault("transparency", 0)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(os.fsencode(path) if isinstance(path, bytes) else path, **save)
    return path


def make_hostile_folder(folder):
    """The corpus: ``(built, skipped)``, the sources expected in the dataset and ``{file: kind}``
    of the entries expected in the skipped list (names as the builder prints them)."""
    folder.mkdir()
    p = folder
    built, skipped = set(), {}

    def good(name, index, **kwargs):
        save_picture(p / name, index, **kwargs)
        built.add(printable(name))

    # Pictures that must be built, in every mode Pillow reads.
    good("0001妙蛙种子.png", 1)
    good("0004小火龍.png", 4)  # traditional name
    good("0007杰尼龟.jpg", 7, mode="CMYK", format="JPEG")
    good("0010绿毛虫.png", 10, mode="I;16")  # 16-bit grey
    good("0011铁甲蛹.png", 11, mode="P")  # palette with a tRNS transparent index
    good("0012巴大蝶.png", 12, mode="LA")
    frames = [Image.fromarray(np.full((12, 12, 3), value, np.uint8)) for value in (30, 200)]
    frames[0].save(p / "0013独角虫.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    built.add("0013独角虫.gif")  # animated
    long_name = "0016波波_" + "a" * 230 + ".png"  # 249 bytes of a 255-byte limit
    good(long_name, 16)
    good("0020拉达\n.png", 20)  # a newline in a name: built, shown escaped
    # One Pokemon's folder: a non-UTF-8 name inside is built (its name is not needed), a nested
    # folder is read, a symlink to a folder inside is not followed (it could loop).
    (p / "0025皮卡丘" / "sub").mkdir(parents=True)
    save_picture(os.fsencode(p / "0025皮卡丘") + b"/\xff.png", 25)
    built.add("0025皮卡丘/\\xff.png")
    good("0025皮卡丘/sub/back.png", 26)
    os.symlink("..", p / "0025皮卡丘" / "up")
    skipped["0025皮卡丘/up/"] = "symlinked folder"
    # Symlinks that lead to a picture or a folder are read; their targets sit in a hidden folder.
    (p / ".store" / "0019小拉达").mkdir(parents=True)
    save_picture(p / ".store" / "linked.png", 18)
    save_picture(p / ".store" / "0019小拉达" / "front.png", 19)
    skipped[".store/"] = "hidden"
    os.symlink(".store/linked.png", p / "0018大比鸟.png")
    built.add("0018大比鸟.png")
    os.symlink(".store/0019小拉达", p / "0019小拉达")
    built.add("0019小拉达/front.png")

    # Bad pictures.
    (p / "0021烈雀.png").write_bytes(b"")
    skipped["0021烈雀.png"] = "bad picture"  # zero bytes
    truncated = (p / "0001妙蛙种子.png").read_bytes()[:60]
    (p / "0022大嘴雀.png").write_bytes(truncated)
    skipped["0022大嘴雀.png"] = "bad picture"
    (p / "0023阿柏蛇.png").write_text("this is not a picture")
    skipped["0023阿柏蛇.png"] = "bad picture"
    (p / "0024阿柏怪.png").write_bytes(png_header_only(20_000, 20_000))
    assert 20_000 * 20_000 > 2 * Image.MAX_IMAGE_PIXELS
    skipped["0024阿柏怪.png"] = "bad picture"  # decompression bomb
    shutil.copy(p / "0001妙蛙种子.png", p / "0001妙蛙种子_copy.png")
    skipped["0001妙蛙种子_copy.png"] = "duplicate"
    # Names that say no Pokemon, or two different ones.
    save_picture(p / "1999.png", 1999)
    skipped["1999.png"] = "not a Pokemon name"  # unknown Pokedex number
    save_picture(p / "0002妙蛙种子.png", 2)
    skipped["0002妙蛙种子.png"] = "not a Pokemon name"  # number and name disagree
    save_picture(p / "0025皮卡丘\\..\\..\\etc\\passwd.png", 27)
    skipped["0025皮卡丘\\..\\..\\etc\\passwd.png"] = "not a Pokemon name"  # path-like
    save_picture(p / "\x1b[31m0030.png", 30)
    skipped["\\x1b[31m0030.png"] = "not a Pokemon name"  # a terminal escape, never printed raw
    (p / "not a pokemon").mkdir()
    save_picture(p / "not a pokemon" / "x.png", 31)
    skipped["not a pokemon/"] = "not a Pokemon name"
    save_picture(os.fsencode(p) + b"/0026\xff.png", 32)
    skipped["0026\\xff.png"] = "name not UTF-8"
    os.mkdir(os.fsencode(p) + b"/\xff\xfe")
    skipped["\\xff\\xfe/"] = "name not UTF-8"
    # Links that lead nowhere, or back.
    os.symlink("loop.png", p / "loop.png")
    skipped["loop.png"] = "symlink loop"
    os.symlink("0031尼多后", p / "0031尼多后")
    skipped["0031尼多后"] = "symlink loop"
    os.symlink(".", p / "0032尼多朗")
    skipped["0032尼多朗/"] = "symlink loop"  # a folder link back to --images itself
    os.symlink("missing.png", p / "0027穿山鼠.png")
    skipped["0027穿山鼠.png"] = "dangling symlink"
    # Entries that are not pictures at all.
    (p / ".DS_Store").write_bytes(b"\0\0")
    skipped[".DS_Store"] = "hidden"
    save_picture(p / "..\\..\\0021烈雀.png", 33)  # a dot-name that looks like a path out
    skipped["..\\..\\0021烈雀.png"] = "hidden"
    (p / "0028穿山王").mkdir()
    skipped["0028穿山王/"] = "empty folder"
    os.mkfifo(p / "0029尼多兰.png")  # opening it would block the build forever
    skipped["0029尼多兰.png"] = "not a regular file"
    os.symlink("/dev/zero", p / "0035尼多娜.png")  # reading it would never end
    skipped["0035尼多娜.png"] = "not a regular file"
    if CAN_DENY_READING:
        save_picture(p / "0033尼多力诺.png", 34).chmod(0)
        skipped["0033尼多力诺.png"] = "bad picture"  # unreadable file: cannot read (Permission denied)
        (p / "0034尼多王").mkdir()
        save_picture(p / "0034尼多王" / "front.png", 35)
        (p / "0034尼多王").chmod(0)
        skipped["0034尼多王/"] = "unreadable"
    return built, skipped


def allow_cleanup(folder):
    for path in (folder / "0033尼多力诺.png", folder / "0034尼多王"):
        if path.exists():
            path.chmod(0o755)


def snapshot(root, leave_out=()):
    """Every path under ``root`` (bytes, links not followed) with what lstat says of it."""
    found = {}
    for directory, folders, files in os.walk(os.fsencode(root)):
        folders[:] = [name for name in folders if os.path.join(directory, name) not in leave_out]
        for name in folders + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            found[path] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino, link)
    return found


def read_back_with_upstream(dataset, image_size=IMAGE_SIZE):
    """Every sample of every split through upstream's own LMDBDataset; returns the image count."""
    from cn_clip.training.data import LMDBDataset

    info = json.loads((dataset / "dataset_info.json").read_bytes().decode("utf-8"))  # strict UTF-8
    images = 0
    for split in SPLITS:
        if not info["splits"][split]["images"]:
            continue
        data = LMDBDataset(str(dataset / "lmdb" / split), split=split, max_txt_length=24, resolution=image_size)
        assert len(data) == info["splits"][split]["pairs"]
        assert data.number_images == info["splits"][split]["images"]
        for index in range(len(data)):
            image, _, _ = data[index]
            assert tuple(image.shape) == (3, image_size, image_size)
        images += data.number_images
        del data
    assert images == len(info["images"])
    return info


def accounted_for(folder, built, skipped):
    """The entries under ``folder`` (as printed) that are neither built, skipped, nor inside a skipped folder."""
    skipped_folders = {name for name in skipped if name.endswith("/")}
    missing = []
    for directory, folders, files in os.walk(folder):
        for name in folders + files:
            relative = printable(os.path.relpath(os.path.join(directory, name), folder))
            parts = relative.split("/")
            if any("/".join(parts[:depth]) + "/" in skipped_folders for depth in range(1, len(parts) + 1)):
                continue
            if relative in built or relative in skipped:
                continue
            if name in folders and any(path.startswith(relative + "/") for path in built | set(skipped)):
                continue
            missing.append(relative)
    return missing


def test_hostile_corpus_builds_and_accounts_for_every_entry(tmp_path):
    pictures = tmp_path / "pics"
    built, skipped = make_hostile_folder(pictures)
    kinds = set(skipped.values())
    assert len(built) + len(skipped) >= 30 and len(kinds) >= 9
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    try:
        for attempt in range(2):  # a build, then a rebuild over it
            result = run_cli("--images", pictures, "--out", out, "--image-size", IMAGE_SIZE, "--workers", 2)
            output = result.stdout + result.stderr
            assert result.returncode == 0, output[-3000:]
            assert "Traceback" not in output and "\x1b" not in output
            info = read_back_with_upstream(out)
            assert {image["source"] for image in info["images"].values()} == built
            assert {entry["file"]: entry["kind"] for entry in info["skipped"]} == skipped
            for entry in info["skipped"]:
                assert entry["reason"] and f"{entry['file']}: {entry['reason']}" in result.stdout
            assert info["counts"]["built"] == len(built) and info["counts"]["skipped"] == len(skipped)
            assert sum(info["counts"]["skipped_by_kind"].values()) == len(skipped)
            assert f"{len(built)} pictures built, {len(skipped)} skipped" in result.stdout
            assert accounted_for(pictures, built, skipped) == []
            # Nothing but the builder's own files changed: the pictures as they were, --out only ours.
            assert snapshot(tmp_path, leave_out={os.fsencode(out)}) == {
                path: state for path, state in before.items()}
            assert sorted(os.listdir(tmp_path)) == ["out", "pics"]
            assert set(os.listdir(out)) == OUTPUT_NAMES
        reasons = {entry["file"]: entry["reason"] for entry in info["skipped"]}
        assert "empty" in reasons["0021烈雀.png"] and "truncated" in reasons["0022大嘴雀.png"]
        assert "not a picture" in reasons["0023阿柏蛇.png"] and "decompression bomb" in reasons["0024阿柏怪.png"]
        assert "same picture as 0001妙蛙种子.png" in reasons["0001妙蛙种子_copy.png"]
        assert "1999 is not in the Pokedex" in reasons["1999.png"] and "#2 妙蛙草" in reasons["0002妙蛙种子.png"]
        assert "dangling symlink to missing.png" in reasons["0027穿山鼠.png"]
        assert "FIFO" in reasons["0029尼多兰.png"] and "character device" in reasons["0035尼多娜.png"]
        if CAN_DENY_READING:
            assert "Permission denied" in reasons["0033尼多力诺.png"]
            assert "Permission denied" in reasons["0034尼多王/"]
        names = {image["source"]: image["name"] for image in info["images"].values()}
        assert names["0004小火龍.png"] == "小火龙" and names["0025皮卡丘/\\xff.png"] == "皮卡丘"
        assert names["0020拉达\\n.png"] == "拉达" and names["0019小拉达/front.png"] == "小拉达"
    finally:
        allow_cleanup(pictures)


def test_an_unreadable_file_and_folder_are_skipped_saying_permission_denied(tmp_path):
    """A file and a folder the builder may not read are skipped, each named with the reason, the
    pictures beside them built and both left as they were. The corpus holds the two kinds only where
    some user cannot read them: this test says so, loudly, where none can."""
    if not CAN_DENY_READING:
        pytest.skip("running as root without setpriv: root reads mode-000 files, so the unreadable file and "
                    "folder kinds are left out of the hostile corpus")
    pictures = tmp_path / "pics"
    pictures.mkdir()
    readable = ["0001妙蛙种子.png", "0004小火龙.png", "0007杰尼龟.png"]
    for index, name in enumerate(readable):
        save_picture(pictures / name, index)
    save_picture(pictures / "0033尼多力诺.png", 34).chmod(0)
    (pictures / "0034尼多王").mkdir()
    save_picture(pictures / "0034尼多王" / "front.png", 35)
    (pictures / "0034尼多王").chmod(0)
    try:
        result = run_cli("--images", pictures, "--out", tmp_path / "out", "--image-size", IMAGE_SIZE)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        info = json.loads((tmp_path / "out" / "dataset_info.json").read_bytes().decode("utf-8"))
        assert sorted(image["source"] for image in info["images"].values()) == readable
        skipped = {entry["file"]: (entry["kind"], entry["reason"]) for entry in info["skipped"]}
        assert set(skipped) == {"0033尼多力诺.png", "0034尼多王/"}
        assert skipped["0033尼多力诺.png"][0] == "bad picture" and skipped["0034尼多王/"][0] == "unreadable"
        for file, (_, reason) in skipped.items():
            assert "Permission denied" in reason and f"{file}: {reason}" in result.stdout
        assert (pictures / "0033尼多力诺.png").stat().st_mode & 0o777 == 0
        assert (pictures / "0034尼多王").stat().st_mode & 0o777 == 0
    finally:
        allow_cleanup(pictures)


def test_non_utf8_names_never_break_the_build_or_the_info_file(tmp_path):
    from cn_clip_pokemon.pokedex import Pokedex, to_simplified

    pictures = tmp_path / "pics"
    (pictures / "0025皮卡丘").mkdir(parents=True)
    save_picture(os.fsencode(pictures / "0025皮卡丘") + b"/\xff.png", 1)
    save_picture(os.fsencode(pictures) + b"/0025\xff.png", 2)
    save_picture(pictures / "0001妙蛙种子.png", 3)
    summary = build_dataset(pictures, tmp_path / "out", image_size=16, progress=False)
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_bytes().decode("utf-8"))
    assert sorted(image["source"] for image in info["images"].values()) == ["0001妙蛙种子.png", "0025皮卡丘/\\xff.png"]
    assert [(entry["file"], entry["kind"]) for entry in summary["skipped"]] == [("0025\\xff.png", "name not UTF-8")]
    # OpenCC takes no lone surrogates: the text around them is still converted.
    name = os.fsdecode("小火龍".encode() + b"\xff")
    assert to_simplified(name) == os.fsdecode("小火龙".encode() + b"\xff")
    with pytest.raises(ValueError, match="no Pokemon number or known name"):
        Pokedex.load().parse_picture_name(name + ".png")


def test_every_bad_entry_is_named_when_none_can_be_used(tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    names = [f"{number:04d}.png" for number in range(1, 26)]  # 25 empty files, more than the error line names
    for name in names:
        (pictures / name).write_bytes(b"")
    (pictures / "notes.txt").write_text("no Pokemon")
    result = run_cli("--images", pictures, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cn-clip-pokemon: error: none of the 25 pictures") and "25 bad picture" in last
    for name in names + ["notes.txt"]:
        assert f"  {name}: " in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["pics"]


# ---------------------------------------------------------------- --out: only what the builder wrote


def small_pictures(folder, count=30, first=1):
    """``count`` distinct pictures of ten Pokemon, one folder each."""
    from cn_clip_pokemon.pokedex import Pokedex

    pokedex = Pokedex.load()
    for index in range(count):
        number = first + index % 10
        target = folder / f"{number:04d}{pokedex.name(number)}" / f"view_{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_picture(target, 1000 + index)
    return folder


def test_strict_stops_at_bad_entries_but_not_at_hidden_ones(tmp_path):
    pictures = small_pictures(tmp_path / "pics")
    (pictures / ".sprites.json").write_text("{}")
    assert run_cli("--images", pictures, "--out", tmp_path / "out", "--strict").returncode == 0
    os.symlink("loop", pictures / "loop")
    result = run_cli("--images", pictures, "--out", tmp_path / "out", "--strict")
    assert result.returncode == 1 and "loop: symlink loop" in result.stderr and "Traceback" not in result.stderr


def test_images_inside_out_is_refused_and_nothing_is_deleted(tmp_path):
    dataset = tmp_path / "ds"
    build_dataset(small_pictures(tmp_path / "first"), dataset, image_size=16, progress=False)
    small_pictures(dataset / "pics")
    (dataset / "NOTES.txt").write_text("my notes")
    before = snapshot(tmp_path)
    result = run_cli("--images", dataset / "pics", "--out", dataset)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1
    assert str(dataset / "pics") in error and str(dataset) in error and "move the pictures out" in error
    assert snapshot(tmp_path) == before


def test_out_holding_what_the_builder_did_not_write_keeps_it_or_refuses_a_clash(tmp_path):
    pictures = small_pictures(tmp_path / "pics")
    out = tmp_path / "out"
    build_dataset(pictures, out, image_size=16, progress=False)
    (out / "lmdb" / "train" / "imgs" / "lock.mdb").write_bytes(b"")  # LMDB's own: allowed
    build_dataset(pictures, out, image_size=16, progress=False)
    # anything else is kept by a rebuild, as it was
    for foreign in ("NOTES.txt", "lmdb/train/imgs/mine.bin", "lmdb/extra/", "lmdb/extra/inner.txt"):
        path = out / foreign
        path.mkdir() if foreign.endswith("/") else path.write_text(f"mine: {foreign}")
    result = run_cli("--images", pictures, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "kept 3 entries build-dataset did not write" in result.stdout
    for foreign in ("NOTES.txt", "lmdb/train/imgs/mine.bin", "lmdb/extra/inner.txt"):
        assert (out / foreign).read_text() == f"mine: {foreign}"
    # a name the build writes, taken by something else: refused, nothing changes
    shutil.rmtree(out / "lmdb" / "extra")
    (out / "test_texts.jsonl").unlink()
    (out / "test_texts.jsonl").mkdir()
    (out / "test_texts.jsonl" / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = run_cli("--images", pictures, "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "holds test_texts.jsonl/" in error and "choose an empty or new --out" in error
    assert snapshot(tmp_path) == before
    shutil.rmtree(out / "test_texts.jsonl")
    # A folder of upstream's own names, not built here (no dataset_info.json of ours), is not ours either.
    (out / "dataset_info.json").write_text('{"mine": 1}')
    result = run_cli("--images", pictures, "--out", out)
    assert result.returncode == 1 and "holds no dataset_info.json of build-dataset" in result.stderr


def test_out_inside_images_is_listed_and_never_read_as_pictures(tmp_path):
    pictures = small_pictures(tmp_path / "pics")
    for _ in range(2):
        result = run_cli("--images", pictures, "--out", pictures / "ds")
        assert result.returncode == 0, result.stderr
    info = json.loads((pictures / "ds" / "dataset_info.json").read_text(encoding="utf-8"))
    assert [(entry["file"], entry["kind"]) for entry in info["skipped"]] == [("ds/", "the --out folder")]
    assert info["counts"]["built"] == 30 and sorted(os.listdir(pictures))[-1] == "ds"


def test_a_symlinked_out_stays_a_link_and_gets_the_new_dataset(tmp_path):
    pictures = small_pictures(tmp_path / "pics")
    real = tmp_path / "real" / "pokemon"
    link = tmp_path / "pokemon"
    link.symlink_to(real)  # dangling at first: the first build creates its target
    for size in (16, 24):
        result = run_cli("--images", pictures, "--out", link, "--image-size", size)
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert json.loads((real / "dataset_info.json").read_text(encoding="utf-8"))["image_size"] == size
    read_back_with_upstream(real, 24)
    assert sorted(os.listdir(tmp_path / "real")) == ["pokemon"] and sorted(os.listdir(tmp_path)) == ["pics", "pokemon", "real"]


# ---------------------------------------------------------------- killed builds

KILLER = r"""
import os, signal, sys
import cn_clip_pokemon.builder.build as build
import cn_clip_pokemon.builder.writers as writers
import cn_clip_pokemon.files as files
from cn_clip_pokemon.cli import main

point = sys.argv[1]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(function, countdown=1):
    calls = [0]
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        calls[0] += 1
        if calls[0] == countdown:
            die()
        return result
    return wrapped

if point == "writing pictures":
    writers.ImageWriter.add = after(writers.ImageWriter.add, countdown=5)
elif point == "info written":
    build.write_info = after(build.write_info)
elif point == "swapped in":
    files.exchange_paths = after(files.exchange_paths)
elif point in ("moved aside", "moved in"):  # a system without rename-exchange: two renames
    files.exchange_paths = lambda first, second: False
    real_replace = os.replace
    def replace(source, destination):
        real_replace(source, destination)
        if point == "moved aside" and ".old-" in str(destination):
            die()
        if point == "moved in" and ".tmp-" in str(source):
            die()
    os.replace = replace
elif point == "cleaning up":  # half-way through removing a leftover
    real_unlink = os.unlink
    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if os.fsdecode(path) == "train_imgs.tsv":
            die()
    os.unlink = unlink
sys.exit(main(sys.argv[2:]))
"""

KILL_POINTS = ["writing pictures", "info written", "swapped in", "moved aside", "moved in", "cleaning up"]


def dataset_state(out):
    """"old" or "new" for a complete dataset at ``out`` (read through upstream), else what is wrong."""
    if not (out / "dataset_info.json").is_file():
        return "no dataset"
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    read_back_with_upstream(out, info["image_size"])
    assert set(os.listdir(out)) == OUTPUT_NAMES
    return {16: "old", 24: "new"}[info["image_size"]]


def leftovers(parent, name="out"):
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(f".{name}."))


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_build_killed_at_any_point_leaves_a_complete_dataset(tmp_path, point):
    old_pictures = small_pictures(tmp_path / "old_pics")
    new_pictures = small_pictures(tmp_path / "new_pics", count=40, first=11)
    out = tmp_path / "out"
    build_dataset(old_pictures, out, image_size=16, progress=False)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    arguments = ["build-dataset", "--images", new_pictures, "--out", out, "--image-size", 24, "--workers", 1, "--no-progress"]
    if point == "cleaning up":
        # A leftover for the next build to remove, and that build killed while removing it.
        (tmp_path / ".out.tmp-abcd1234" / "lmdb").mkdir(parents=True)
        for name in ("train_imgs.tsv", "valid_imgs.tsv"):
            (tmp_path / ".out.tmp-abcd1234" / name).write_text("0\tx\n")
    killed = subprocess.run([sys.executable, str(script), point, *map(str, arguments)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if point == "cleaning up":
        assert (tmp_path / ".out.tmp-abcd1234").is_dir()  # killed half-way through removing it
    state = dataset_state(out)
    expected = {"writing pictures": "old", "info written": "old", "swapped in": "new", "moved in": "new",
                "cleaning up": "old"}
    if point == "moved aside":
        # The one moment of the two-rename fallback with no dataset at --out: the old one waits in
        # .out.old-*, and the next build, even one that fails, puts it back first.
        assert state == "no dataset" and len(leftovers(tmp_path)) == 2
        failed = run_cli("--images", tmp_path / "nothing", "--out", out)
        assert failed.returncode == 1 and "not a folder" in failed.stderr
        assert dataset_state(out) == "old" and leftovers(tmp_path) == []
    else:
        assert state == expected[point]
        assert leftovers(tmp_path)  # the killed build left something behind
    result = run_cli("--images", new_pictures, "--out", out, "--image-size", 24)
    assert result.returncode == 0, result.stderr
    assert dataset_state(out) == "new"
    assert leftovers(tmp_path) == []
    if point != "moved aside":
        assert "note: removed" in result.stdout or "note: put back" in result.stdout


def start_and_wait_for_temp(command, parent, name):
    """Start a build; return it and the moment its temporary folder appeared (it is then under way)."""
    before = set(os.listdir(parent))
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while process.poll() is None:
        if any(entry.startswith(f".{name}.tmp-") for entry in set(os.listdir(parent)) - before):
            break
        time.sleep(0.002)
    return process, time.perf_counter()


def test_kill_minus_9_at_moments_spread_over_a_build(tmp_path):
    """Real kill -9 of the builder and its workers at moments spread over a whole build's work."""
    old_pictures = small_pictures(tmp_path / "old_pics")
    new_pictures = small_pictures(tmp_path / "new_pics", count=600, first=11)
    command = [sys.executable, "-m", "cn_clip_pokemon", "build-dataset", "--images", str(new_pictures),
               "--image-size", "24", "--workers", "2", "--no-progress"]
    process, under_way = start_and_wait_for_temp(command + ["--out", str(tmp_path / "timed")], tmp_path, "timed")
    assert process.wait() == 0
    work = time.perf_counter() - under_way  # from the temporary folder to the finished dataset
    out = tmp_path / "out"
    build_dataset(old_pictures, out, image_size=16, progress=False)
    states, cut_short = [], 0
    for fraction in (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0):
        process, under_way = start_and_wait_for_temp(command + ["--out", str(out)], tmp_path, "out")
        time.sleep(max(0.0, under_way + fraction * work - time.perf_counter()))
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the builder and its workers, as an OOM kill would
        except ProcessLookupError:
            pass
        cut_short += process.wait() == -signal.SIGKILL and bool(leftovers(tmp_path))
        states.append(dataset_state(out))
    assert set(states) <= {"old", "new"} and cut_short >= 3, (states, cut_short)
    result = run_cli("--images", new_pictures, "--out", out, "--image-size", 24)
    assert result.returncode == 0, result.stderr
    assert dataset_state(out) == "new" and leftovers(tmp_path) == []


def test_a_running_build_keeps_its_temporary_folder(tmp_path):
    """A leftover is removed only when no live build holds its lock."""
    from cn_clip_pokemon.files import try_lock

    pictures = small_pictures(tmp_path / "pics")
    live = tmp_path / ".out.tmp-live0000"
    (live / "lmdb").mkdir(parents=True)
    foreign = tmp_path / ".out.tmp-user0000"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    lock = try_lock(live)
    assert lock is not None
    try:
        summary = build_dataset(pictures, tmp_path / "out", image_size=16, progress=False)
    finally:
        os.close(lock)
    assert live.is_dir() and (foreign / "thesis.tex").read_text() == "years of work"
    assert any("left" in note and "alone" in note for note in summary["cleaned"])
    build_dataset(pictures, tmp_path / "out", image_size=16, progress=False)
    assert not live.exists() and foreign.is_dir()
