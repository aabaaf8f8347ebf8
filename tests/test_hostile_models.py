"""Files a hostile user hands to every command that loads a model or reads a dataset, and the
arguments that used to end in tracebacks: a standing corpus run through the real commands.

Each case runs ``cn-clip-pokemon ...`` (``cli.main``) on a folder of the user's files and checks the
one error line, the exit code (1 an error, 2 bad usage), that no traceback is printed, and that every
file of the folder is left as it was. The amplification cases (a 1 x 60,000 picture, a deflated
checkpoint declaring 1.5 GiB) run in a child process whose address space is capped, and assert how
much its peak memory grew.
"""
import collections
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
lmdb = pytest.importorskip("lmdb")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip import model as clip_model  # noqa: E402
from PIL import Image  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon import checkpoint_files  # noqa: E402
from cn_clip_pokemon import model_config_resolver  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from cn_clip_pokemon.images import PictureError, fit_square, open_picture  # noqa: E402
from conftest import STATUS_FIELD, random_clip, registered_model_config  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
VISION, TEXT = "ViT-T-8-64", "RBT-Tiny-chinese"
NAMES = ["0001妙蛙种子", "0004小火龙", "0007杰尼龟", "0025皮卡丘"]


# --------------------------------------------------------------------------- the user's folder


def snapshot(folder):
    """``{relative path: sha256}`` of every file under ``folder`` (embedding caches aside: a command
    may add those beside a checkpoint)."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not any(part.endswith(".cache") for part in path.relative_to(folder).parts):
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_command(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err, says):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cn-clip-pokemon: error: "), err
    assert says in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_weights():
    config, model = random_clip(VISION, TEXT)
    return config, model.state_dict()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_weights):
    """An honest checkpoint, a few pictures and a dataset built from them (read only: copied per test)."""
    from cn_clip_pokemon.builder.build import build_dataset

    root = tmp_path_factory.mktemp("hostile-models")
    config, weights = tiny_weights
    torch.save({"model_config": config, "state_dict": weights}, root / "model.pt")
    pictures = root / "pictures"
    for number, name in enumerate(NAMES):
        (pictures / name).mkdir(parents=True)
        for view in range(3):
            Image.new("RGB", (20, 20), (60 * number, 80 * view, 200)).save(pictures / name / f"v{view}.png")
    build_dataset(pictures, root / "dataset", image_size=32, split_by="view", seed=0, progress=False)
    return root


@pytest.fixture
def user(built, tmp_path):
    """The user's folder for one test: the checkpoint, a picture, the dataset (a copy to edit)."""
    home = tmp_path / "home"
    shutil.copytree(built, home)
    return SimpleNamespace(home=home, checkpoint=home / "model.pt", picture=home / "pictures" / NAMES[3] / "v0.png",
                           dataset=home / "dataset")


# --------------------------------------------------------------------------- hostile checkpoints


class _Storage:
    """Stands for storage "0" of a torch zip archive: a float32 storage of ``numel`` elements."""

    def __init__(self, numel):
        self.numel = numel


class _Tensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.storage.numel,), (1,), False, collections.OrderedDict()))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def deflated_checkpoint(path, mebibytes):
    """A torch zip checkpoint whose one storage, ``mebibytes`` MiB of zeros, is deflated (which
    torch.save never does): a few KB on disk that torch would inflate whole. Written by hand (plain
    zip, no zip64) from one deflate block repeated, so a GiB costs a second (its CRC)."""
    pickled = io.BytesIO()
    _ArchivePickler(pickled, protocol=2).dump({"state_dict": {"module.visual.proj": _Tensor(_Storage(mebibytes << 18))}})
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(chunk, crc)
    deflated = block * mebibytes + compressor.flush()
    records = [("archive/data.pkl", pickled.getvalue(), None), ("archive/byteorder", b"little", None),
               ("archive/version", b"3\n", None), ("archive/data/0", deflated, (mebibytes << 20, crc))]
    central, offset = [], 0
    with open(path, "wb") as file:
        for name, data, inflated in records:
            method, size, check = (8, *inflated) if inflated else (0, len(data), zlib.crc32(data))
            header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, check, len(data), size, len(name), 0)
            file.write(header + name.encode() + data)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, check, len(data), size,
                                       len(name), 0, 0, 0, 0, 0, offset) + name.encode())
            offset += len(header) + len(name) + len(data)
        directory = b"".join(central)
        file.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(directory), offset, 0))
    return path


def _edited(key, change):
    def make(weights):
        weights = dict(weights)
        weights[key] = change(weights[key])
        return weights
    return make


def _every_float(change):
    return lambda weights: {key: change(value) if value.is_floating_point() else value for key, value in weights.items()}


# kind -> (make the state dict from honest weights, what the one line says)
BAD_WEIGHTS = {
    "nan-weights": (_every_float(lambda v: torch.full_like(v, float("nan"))), "NaN or infinite values"),
    "one-inf": (_edited("visual.proj", lambda v: v.clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf")))), "visual.proj holds 1 NaN or infinite"),
    "all-zero": (_every_float(torch.zeros_like), "is all zeros"),
    "zero-projection": (_edited("text_projection", torch.zeros_like), "text_projection is all zeros"),
    "logit-scale-huge": (_edited("logit_scale", lambda v: torch.full_like(v, 1e6)), "logit_scale is 1e+06"),
    "logit-scale-negative": (_edited("logit_scale", lambda v: torch.full_like(v, -3.0)), "logit_scale is -3"),
    "meta": (_edited("visual.proj", lambda v: torch.empty(v.shape, device="meta")), "meta device"),
    "sparse-coo": (_edited("visual.proj", lambda v: v.to_sparse()), "sparse_coo tensor"),
    "sparse-csr": (_edited("visual.proj", lambda v: v.to_sparse_csr()), "sparse_csr tensor"),
    "complex": (_edited("visual.proj", lambda v: v.to(torch.complex64)), "dtype complex64"),
    "integers": (_edited("visual.proj", lambda v: v.to(torch.int64)), "dtype int64"),
    "quantized": (_edited("visual.proj", lambda v: torch.quantize_per_tensor(v, 0.1, 0, torch.qint8)), "is quantized"),
    "one-value-repeated": (_edited("visual.proj", lambda v: torch.zeros(1).expand(*v.shape)), "over a storage of 4 bytes"),
    "not-a-tensor": (_edited("visual.proj", lambda v: "weights"), "is a str, not a tensor"),
    # finite weights whose forward pass overflows: caught on the embeddings, before any score
    "overflowing": (_edited("visual.transformer.resblocks.0.mlp.c_fc.weight", lambda v: v * 1e30), "NaN, infinite or zero embeddings"),
}


def write_bad_checkpoint(folder, kind, tiny_weights):
    config, weights = tiny_weights
    path = folder / f"{kind}.pt"
    if kind == "deflated-100MiB":
        return deflated_checkpoint(path, 100)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on sparse and quantized tensors
        torch.save({"model_config": config, "state_dict": BAD_WEIGHTS[kind][0](weights)}, path)
    return path


CHECKPOINT_KINDS = sorted(BAD_WEIGHTS) + ["deflated-100MiB"]


def _says(kind):
    return "declares 0.10 GiB of content" if kind == "deflated-100MiB" else BAD_WEIGHTS[kind][1]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_classify_refuses_a_hostile_checkpoint_in_one_line(user, tiny_weights, capsys, kind):
    path = write_bad_checkpoint(user.home, kind, tiny_weights)
    before = snapshot(user.home)
    code, out, err = run_command(["classify", user.picture, "--checkpoint", path, "--names", "皮卡丘", "雷丘", "--json", "--device", "cpu"], capsys)
    assert code == 1 and out == ""  # never "probability": NaN
    assert_one_error_line(err, _says(kind))
    assert str(path) in err
    assert snapshot(user.home) == before


@pytest.mark.parametrize("kind", [kind for kind in CHECKPOINT_KINDS if kind != "overflowing"])
def test_load_model_refuses_a_hostile_checkpoint_before_building_the_model(user, tiny_weights, monkeypatch, kind):
    path = write_bad_checkpoint(user.home, kind, tiny_weights)
    import functools

    built_models = []
    real_clip = clip_model.CLIP

    @functools.wraps(real_clip)  # the loader reads CLIP's signature
    def counting(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            built_models.append(1)
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(clip_model, "CLIP", counting)
    with pytest.raises(UserError) as refused:
        ckpt.load_model(path, device="cpu")
    message = str(refused.value)
    assert _says(kind) in message and str(path) in message and "\n" not in message
    assert not built_models  # refused before a model was allocated
    ckpt.load_model(user.checkpoint, device="cpu")  # the control: the same patch sees an honest checkpoint's model built
    assert built_models == [1]


@pytest.mark.parametrize("command", ["evaluate", "search-text", "search-picture"])
@pytest.mark.parametrize("kind", ["nan-weights", "meta", "deflated-100MiB"])
def test_evaluate_and_search_refuse_a_hostile_checkpoint(user, tiny_weights, capsys, command, kind):
    path = write_bad_checkpoint(user.home, kind, tiny_weights)
    before = snapshot(user.home)
    argv = {
        "evaluate": ["evaluate", "--json"],
        "search-text": ["search", "皮卡丘"],
        "search-picture": ["search", "--image", user.picture],
    }[command] + ["--checkpoint", path, "--dataset", user.dataset, "--device", "cpu"]
    code, out, err = run_command(argv, capsys)
    assert code == 1 and out == ""  # evaluate used to exit 0 with top-1 of a NaN model
    assert_one_error_line(err, _says(kind))
    assert snapshot(user.home) == before


def test_an_honest_checkpoint_still_classifies_to_valid_json(user, capsys):
    code, out, err = run_command(["classify", user.picture, "--checkpoint", user.checkpoint, "--names", "皮卡丘", "雷丘", "--json", "--device", "cpu"], capsys)
    assert code == 0 and err == ""
    probabilities = [p["probability"] for p in json.loads(out, parse_constant=pytest.fail)["results"][0]["predictions"]]
    assert abs(sum(probabilities) - 1) < 1e-5


def test_the_archive_check_passes_honest_files_and_leaves_other_formats_to_torch(user, tmp_path):
    checkpoint_files.check_archive_sizes(user.checkpoint)  # torch.save's own zip: stored, never expanded
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    checkpoint_files.check_archive_sizes(legacy)
    assert torch.equal(checkpoint_files.read_checkpoint_file(legacy)["x"], torch.ones(3))


# --------------------------------------------------------------------------- hostile pictures


def truncated_qoi():
    """A QOI file cut after its header: Pillow's decoder raises IndexError."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "QOI")
    return buffer.getvalue()[:14]


def tiff_without_dimensions():
    """A two-page TIFF whose second page has no ImageWidth: counting pages raises TypeError."""
    pages = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    data = bytearray(buffer.getvalue())
    number = lambda at, size: int.from_bytes(data[at:at + size], "little")  # noqa: E731  ("II": little-endian)
    first = number(4, 4)
    second = number(first + 2 + 12 * number(first, 2), 4)
    for entry in range(number(second, 2)):
        at = second + 2 + 12 * entry
        if number(at, 2) == 256:  # ImageWidth -> a tag nobody reads
            data[at:at + 2] = (65000).to_bytes(2, "little")
    return bytes(data)


def damaged_avif():
    """The first one-byte change (each byte inverted in turn) of a small AVIF that makes Pillow's AVIF
    decoder raise RuntimeError; None where this Pillow has no AVIF or no change does."""
    from PIL import features

    if not features.check("avif"):
        return None
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, "AVIF")
    data = buffer.getvalue()
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= 0xFF
        try:
            with Image.open(io.BytesIO(bytes(changed))) as image:
                image.load()
        except RuntimeError:
            return bytes(changed)
        except Exception:
            continue
    return None


def thin_strip(width, height):
    """A picture of 1 x 60,000 pixels (or 60,000 x 1) is a few hundred bytes of PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


DAMAGED_PICTURES = {
    "truncated.qoi": (truncated_qoi, "IndexError"),
    "no-dimensions.tif": (tiff_without_dimensions, "TypeError: Missing dimensions"),
    "damaged.avif": (damaged_avif, "RuntimeError"),
    "truncated.png": (lambda: thin_strip(30, 30)[:60], "damaged or truncated picture"),
    "empty.png": (lambda: b"", "empty file"),
    "not-a-picture.jpg": (lambda: b"hello, not a picture\n", "not a picture Pillow can read"),
}


@pytest.fixture
def damaged(user, request):
    name = request.param
    make, says = DAMAGED_PICTURES[name]
    data = make()
    if data is None:
        pytest.skip(f"this Pillow makes no {name}")
    path = user.home / name
    path.write_bytes(data)
    return SimpleNamespace(path=path, says=says)


@pytest.mark.parametrize("damaged", sorted(DAMAGED_PICTURES), indirect=True)
@pytest.mark.parametrize("command", ["classify", "search"])
def test_a_damaged_picture_is_one_line_naming_it(user, damaged, capsys, command):
    with pytest.raises(PictureError) as refused:  # the one opening rule, whatever Pillow raised
        open_picture(damaged.path)
    assert damaged.says in str(refused.value) and str(damaged.path) in str(refused.value)
    before = snapshot(user.home)
    if command == "classify":
        argv = ["classify", damaged.path, "--checkpoint", user.checkpoint, "--names", "皮卡丘", "--device", "cpu"]
    else:
        argv = ["search", "--image", damaged.path, "--checkpoint", user.checkpoint, "--dataset", user.dataset, "--device", "cpu"]
    code, out, err = run_command(argv, capsys)
    assert code == 1 and out == ""
    assert_one_error_line(err, damaged.says)
    assert str(damaged.path) in err
    assert snapshot(user.home) == before


@pytest.mark.parametrize("size", [(1, 60000), (60000, 1), (1, 16000)])
def test_a_thin_strip_is_classified_like_any_picture(user, capsys, size):
    path = user.home / f"strip-{size[0]}x{size[1]}.png"
    path.write_bytes(thin_strip(*size))
    assert path.stat().st_size < 1024
    square = fit_square(open_picture(path), 64)
    assert square.size == (64, 64) and square.getpixel((0, 0)) == (255, 255, 255)  # padded on white
    code, out, err = run_command(["classify", path, "--checkpoint", user.checkpoint, "--names", "皮卡丘", "雷丘", "--device", "cpu"], capsys)
    assert code == 0 and err == "" and "皮卡丘" in out


# --------------------------------------------------------------------------- hand-edited datasets


def _edit_info(change):
    def edit(dataset):
        path = dataset / "dataset_info.json"
        info = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(change(info), ensure_ascii=False), encoding="utf-8")
    return edit


def _put(folder, key, value):
    env = lmdb.open(str(folder), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def _first_image_key(folder):
    env = lmdb.open(str(folder), readonly=True, lock=False)
    with env.begin() as txn:
        key = next(key for key, _ in txn.cursor() if key != b"num_images")
    env.close()
    return key


def _not_base64(split):
    def edit(dataset):
        folder = dataset / "lmdb" / split / "imgs"
        _put(folder, _first_image_key(folder), b"!!!not base64***")
    return edit


def _tsv_not_base64(dataset):
    shutil.rmtree(dataset / "lmdb")
    path = dataset / "test_imgs.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].split("\t")[0] + "\t@@@not base64"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _texts_line(line):
    def edit(dataset):
        (dataset / "test_texts.jsonl").write_text(line + "\n", encoding="utf-8")
    return edit


def _other_split_texts_without_info(dataset):
    # without dataset_info.json, evaluate ranks the texts of every split: train's are read too
    (dataset / "dataset_info.json").unlink()
    (dataset / "train_texts.jsonl").write_text('{"text_id": 0, "image_ids": [1]}\n', encoding="utf-8")


def _pair(split, value):
    return lambda dataset: _put(dataset / "lmdb" / split / "pairs", b"0", pickle.dumps(value))


# kind -> (edit the dataset, commands that read it, what the one line says)
EDITED_DATASETS = {
    "picture-not-base64": (_not_base64("test"), ("search", "evaluate"), "is not base64"),
    "tsv-picture-not-base64": (_tsv_not_base64, ("search", "evaluate"), "test_imgs.tsv: picture"),
    "picture-key-not-a-number": (lambda d: _put(d / "lmdb" / "test" / "imgs", b"abc", b"AAAA"), ("search", "evaluate"), "key b'abc' is not a picture id"),
    "images-is-a-list": (_edit_info(lambda info: dict(info, images=[])), ("search", "evaluate"), "'images' is a JSON list"),
    "info-is-a-list": (_edit_info(lambda info: []), ("search", "evaluate"), "holds a JSON list, not an object"),
    "names-is-a-number": (_edit_info(lambda info: dict(info, names=5)), ("search", "evaluate"), "'names' is not a list of texts"),
    "image-entry-is-a-text": (_edit_info(lambda info: dict(info, images={k: "x" for k in info["images"]})), ("search", "evaluate"), "is a JSON str, not an object"),
    "captions-not-texts": (_edit_info(lambda info: dict(info, images={k: dict(v, captions=[1]) for k, v in info["images"].items()})), ("search", "evaluate"), "'captions' is not a list of texts"),
    "text-is-a-number": (_texts_line('{"text_id": 0, "text": 5, "image_ids": [1]}'), ("search", "evaluate"), "'text' is missing or not a text"),
    "image-ids-not-numbers": (_texts_line('{"text_id": 0, "text": "皮卡丘", "image_ids": "x"}'), ("search", "evaluate"), "'image_ids' is not a list of picture ids"),
    "texts-line-not-an-object": (_texts_line("[1, 2]"), ("search", "evaluate"), "is a JSON list, not an object"),
    "train-texts-damaged-without-info": (_other_split_texts_without_info, ("evaluate",), "train_texts.jsonl line 1: 'text' is missing"),
    "num-samples-not-a-number": (lambda d: _put(d / "lmdb" / "train" / "pairs", b"num_samples", b"x"), ("train",), "num_samples is b'x', not a whole number"),
    "num-images-not-a-number": (lambda d: _put(d / "lmdb" / "train" / "imgs", b"num_images", b"x"), ("train",), "num_images is b'x', not a whole number"),
    "pair-names-a-missing-picture": (_pair("train", (999999, 0, "皮卡丘")), ("train",), "picture 999999, which a pair in"),
    "train-picture-not-base64": (_not_base64("train"), ("train",), "is not base64"),
    "train-picture-not-a-picture": (lambda d: _put(d / "lmdb" / "train" / "imgs", _first_image_key(d / "lmdb" / "train" / "imgs"), b"AAAAAAAA"), ("train",), "is not a picture Pillow can read"),
}
DATASET_CASES = [(kind, command) for kind, (_, commands, _) in sorted(EDITED_DATASETS.items()) for command in commands]


@pytest.mark.parametrize("kind, command", DATASET_CASES)
def test_a_hand_edited_dataset_is_one_line_naming_the_file(user, capsys, tmp_path, kind, command):
    edit, _, says = EDITED_DATASETS[kind]
    edit(user.dataset)
    before = snapshot(user.home)
    if command == "train":
        argv = ["train", "--train-data", user.dataset / "lmdb" / "train", "--vision-model", VISION, "--text-model", TEXT,
                "--batch-size", "2", "--max-epochs", "1", "--logs", tmp_path / "logs", "--name", "hostile", "--device", "cpu"]
    else:
        argv = {"search": ["search", "皮卡丘"], "evaluate": ["evaluate"]}[command]
        argv += ["--checkpoint", user.checkpoint, "--dataset", user.dataset, "--device", "cpu"]
    code, out, err = run_command(argv, capsys)
    assert code == 1 and out == ""
    assert_one_error_line(err, says)
    assert "rebuild" in err
    assert snapshot(user.home) == before
    assert not (tmp_path / "logs").exists()  # refused before training started


# --------------------------------------------------------------------------- command lines


def _train(*extra):
    return lambda u, t: ["train", "--train-data", u.dataset / "lmdb" / "train", "--vision-model", VISION, "--text-model", TEXT,
                         "--logs", t / "logs", "--name", "usage", *extra]


def _build(*extra):
    return lambda u, t: ["build-dataset", "--images", u.home / "pictures", "--out", t / "new-dataset", "--no-progress", *extra]


def _fetch(*extra):
    return lambda u, t: ["fetch-sprites", "--out", t / "sprites", "--no-progress", *extra]


# case -> (argv, what the one line says); every one is bad usage: exit 2, before any work
BAD_USAGE = {
    "train-batch-size-word": (_train("--batch-size", "abc"), "argument --batch-size: invalid int value: 'abc'"),
    "train-batch-size-0": (_train("--batch-size", "0"), "argument --batch-size: must be at least 1, not 0"),
    "train-context-length-negative": (_train("--context-length", "-1"), "argument --context-length: must be at least 1"),
    "train-unknown-flag": (_train("--bogus", "3"), "unrecognized arguments: --bogus 3"),
    "train-nproc-per-node-0": (_train("--nproc-per-node", "0"), "argument --nproc-per-node: must be at least 1, not 0"),
    "train-nnodes-word": (_train("--nnodes", "two"), "argument --nnodes: 'two' is not a whole number"),
    "train-master-port-99999": (_train("--master-port", "99999"), "argument --master-port: must be 1 to 65535, not 99999"),
    "train-pretrained-and-resume": (lambda u, t: _train("--pretrained", u.checkpoint, "--resume", u.checkpoint)(u, t), "--pretrained and --resume"),
    "build-template-without-a-place": (_build("--template", "一张图片"), "argument --template: template '一张图片' must hold exactly one {}"),
    "build-valid-fraction-2": (_build("--valid-fraction", "2"), "argument --valid-fraction: must be at least 0 and less than 1"),
    "build-test-fraction-nan": (_build("--test-fraction", "nan"), "argument --test-fraction: must be at least 0 and less than 1"),
    "build-fractions-add-up-to-1": (_build("--valid-fraction", "0.5", "--test-fraction", "0.5"), "add up to 1 or more"),
    "build-image-size-4": (_build("--image-size", "4"), "argument --image-size: must be at least 8, not 4"),
    "build-image-size-5000": (_build("--image-size", "5000"), "argument --image-size: must be 8 to 4096, not 5000"),
    "build-workers-0": (_build("--workers", "0"), "argument --workers: must be at least 1, not 0"),
    "fetch-numbers-word": (_fetch("--numbers", "abc"), "argument --numbers: 'abc' is not a number or a range"),
    "fetch-numbers-beyond-649": (_fetch("--numbers", "1-700"), "argument --numbers: 1-700 is outside #1-649"),
    "fetch-frames-negative": (_fetch("--frames", "-1"), "argument --frames: must be at least 1, not -1"),
    "serve-port-99999": (lambda u, t: ["serve", "--checkpoint", u.checkpoint, "--port", "99999"], "argument --port:"),
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_usage_is_one_line_and_exit_2_before_any_work(user, capsys, tmp_path, case):
    argv, says = BAD_USAGE[case]
    before = snapshot(user.home)
    code, out, err = run_command(argv(user, tmp_path), capsys)
    assert code == 2 and out == ""
    assert_one_error_line(err, says)
    assert snapshot(user.home) == before
    assert not any((tmp_path / name).exists() for name in ("logs", "new-dataset", "sprites"))


# --------------------------------------------------------------------------- the model-config resolver


@pytest.fixture
def plugin_dict_config(tmp_path, monkeypatch):
    """A plugin registering a vision config as a dict, a cache root that cannot be written (a file is
    there), and a temporary folder of this test's own."""
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(model_config_resolver, "_PRIVATE_FOLDER", None)
    config = json.loads(model_config_resolver.model_config_path(VISION).read_text(encoding="utf-8"))

    with registered_model_config("ViT-Hostile-Dict", config, "hostile-dict-config"):
        text = json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        filename = model_config_resolver.config_file_name("ViT-Hostile-Dict", config)
        yield SimpleNamespace(name="ViT-Hostile-Dict", config=config, text=text, filename=filename,
                              shared=tmp_path / "tmp" / f"cn-clip-pokemon-model-configs-{os.getuid()}")


def _planted(config, marker):
    """The registered config, except that upstream's eval() of its vision_layers creates ``marker``."""
    return json.dumps(dict(config, vision_layers=f"__import__('pathlib').Path({str(marker)!r}).touch() or {config['vision_layers']}"))


def _resolve_everywhere(name):
    """What upstream does with a config name: training's lookup, and create_model, which eval()s vision_layers."""
    from cn_clip.clip.utils import create_model
    from cn_clip.training.data import model_config_file

    path = model_config_file(name)
    create_model(f"{name}@{TEXT}")
    return Path(path)


def _assert_private(folder):
    status = os.lstat(folder)
    assert stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not stat.S_IMODE(status.st_mode) & 0o077


@pytest.mark.parametrize("attack", ["world-writable-folder", "symlink-to-their-folder", "folder-of-another-user"])
def test_someone_elses_folder_at_the_fallback_name_runs_nothing(plugin_dict_config, tmp_path, attack):
    setup = plugin_dict_config
    marker = tmp_path / "their-code-ran"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / setup.filename).write_text(_planted(setup.config, marker), encoding="utf-8")
    if attack == "symlink-to-their-folder":
        setup.shared.symlink_to(theirs, target_is_directory=True)
    else:
        shutil.copytree(theirs, setup.shared)
        os.chmod(setup.shared, 0o777)
        if attack == "folder-of-another-user":
            if os.geteuid() != 0:
                pytest.skip("giving a folder to another user needs root")
            os.chown(setup.shared, 4321, 4321)
    path = _resolve_everywhere(setup.name)
    assert not marker.exists()
    assert path.read_text(encoding="utf-8") == setup.text
    assert setup.shared not in path.parents and theirs not in path.resolve().parents
    _assert_private(path.parent)


def test_a_changed_file_in_our_own_folder_is_written_again_before_use(plugin_dict_config, tmp_path):
    setup = plugin_dict_config
    first = model_config_resolver.model_config_path(setup.name)
    assert first.parent == setup.shared
    _assert_private(setup.shared)
    marker = tmp_path / "their-code-ran"
    first.write_text(_planted(setup.config, marker), encoding="utf-8")  # same name, other bytes
    path = _resolve_everywhere(setup.name)
    assert path == first and path.read_text(encoding="utf-8") == setup.text
    assert not marker.exists()


# --------------------------------------------------------------------------- memory ceilings

PICTURE_CEILING = STATUS_FIELD + textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
    from cn_clip_pokemon.images import fit_square, open_picture
    sizes = [fit_square(open_picture(path), 224).size for path in sys.argv[1:]]
    print(json.dumps({"sizes": sizes, "peak_mib": status_field("VmHWM") / 2**20}))
""")


def test_a_thin_strip_opens_and_pads_within_1_gib_of_address_space(tmp_path):
    # a 60,000^2 canvas would be 14 GB: MemoryError under this limit
    paths = []
    for size in ((1, 60000), (60000, 1)):
        paths.append(tmp_path / f"{size[0]}x{size[1]}.png")
        paths[-1].write_bytes(thin_strip(*size))
    done = subprocess.run([sys.executable, "-c", PICTURE_CEILING, *map(str, paths)], capture_output=True, text=True,
                          cwd=REPOSITORY, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout)
    assert measured["sizes"] == [[224, 224], [224, 224]] and measured["peak_mib"] < 300


COMMAND_CEILING = STATUS_FIELD + textwrap.dedent("""
    import contextlib, io, json, resource, sys
    from cn_clip_pokemon.cli import main

    def peak_mib():
        return status_field("VmHWM") / 2**20

    checkpoint, picture, strip, wide, bomb = sys.argv[1:6]
    options = ["--names", "皮卡丘", "雷丘", "--device", "cpu", "--no-cache"]
    results = {}

    def run(name, argv):
        said = io.StringIO()
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        results[name] = {"code": code, "err": said.getvalue(), "peak_mib": peak_mib()}

    run("warm", ["classify", picture, "--checkpoint", checkpoint, *options])
    # from here, asking for more than 1 GiB more fails with MemoryError instead of taking the machine
    limit = status_field("VmSize") + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    run("strips", ["classify", strip, wide, "--checkpoint", checkpoint, *options])
    run("deflated", ["classify", picture, "--checkpoint", bomb, *options])
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def measured_commands(built, tmp_path_factory):
    """classify on a 1 x 60,000 and a 60,000 x 1 picture, then with a deflated checkpoint of about
    1.5 MB declaring 1.5 GiB, in one child process capped at 1 GiB above its warmed-up size."""
    folder = tmp_path_factory.mktemp("ceilings")
    strip, wide = folder / "strip.png", folder / "wide.png"
    strip.write_bytes(thin_strip(1, 60000))
    wide.write_bytes(thin_strip(60000, 1))
    bomb = deflated_checkpoint(folder / "deflated.pt", 1536)
    picture = built / "pictures" / NAMES[3] / "v0.png"
    done = subprocess.run([sys.executable, "-c", COMMAND_CEILING, str(built / "model.pt"), str(picture), str(strip), str(wide), str(bomb)],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    results["bomb_bytes"] = bomb.stat().st_size
    return results


def test_classify_on_a_thin_strip_needs_no_more_memory_than_on_a_sprite(measured_commands):
    warm, strips = measured_commands["warm"], measured_commands["strips"]
    assert warm["code"] == 0 and strips["code"] == 0, strips["err"]
    assert strips["peak_mib"] - warm["peak_mib"] < 200


def test_a_deflated_checkpoint_is_refused_before_it_is_inflated(measured_commands):
    deflated, warm = measured_commands["deflated"], measured_commands["warm"]
    assert measured_commands["bomb_bytes"] < 4 << 20  # 1.5 GiB declared in a few MB
    assert deflated["code"] == 1
    assert_one_error_line(deflated["err"], "declares 1.50 GiB of content")
    assert deflated["peak_mib"] - warm["peak_mib"] < 200
