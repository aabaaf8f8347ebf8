"""Inputs made to hurt: a dataset whose pickles run code, a tiny checkpoint asking for a huge model,
and command lines that used to end in tracebacks. Each is refused with one line that says why."""
import base64
import copyreg
import io
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
lmdb = pytest.importorskip("lmdb")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip import model as clip_model  # noqa: E402
from PIL import Image  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.dataset_format import pair_location, safe_pair_loads  # noqa: E402
from cn_clip_pokemon.default_plugins import pokemon_dataset  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from conftest import random_clip  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


class RunsCommand:
    """A pickled value that runs a shell command when unpickled (what a crafted dataset holds)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_lmdb(folder, items):
    folder.mkdir(parents=True)
    env = lmdb.open(str(folder), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


@pytest.fixture
def crafted_dataset(tmp_path):
    """DATASET/lmdb/train in upstream's format: pair 0 is honest, pair 1 runs `touch MARKER`."""
    marker = tmp_path / "payload-ran"
    picture = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(picture, format="PNG")
    split = tmp_path / "dataset" / "lmdb" / "train"
    _write_lmdb(split / "imgs", {b"num_images": b"1", b"0": base64.urlsafe_b64encode(picture.getvalue())})
    _write_lmdb(
        split / "pairs",
        {
            b"num_samples": b"2",
            b"0": pickle.dumps((0, 0, "皮卡丘")),
            b"1": pickle.dumps(RunsCommand(f"touch {marker}")),
        },
    )
    return SimpleNamespace(split=split, pairs=split / "pairs", marker=marker)


def _assert_refused_pair(message, dataset, key="1"):
    assert str(dataset.pairs) in message and f"key '{key}'" in message
    assert "not trusted" in message and "rebuild" in message and "\n" not in message
    assert not dataset.marker.exists()


def test_crafted_pair_is_refused_when_training_opens_the_dataset(crafted_dataset):
    # exactly what upstream's training calls through patches/0005 with --dataset pokemon
    args = SimpleNamespace(
        train_data=str(crafted_dataset.split), val_data=None, batch_size=2, valid_batch_size=2, seed=0,
        num_workers=0, valid_num_workers=0, use_augment=False, vision_model="ViT-B-16", device=None,
    )
    with pytest.raises(UserError) as error:
        pokemon_dataset.pokemon_dataset.get_dataset(args, is_train=True)
    _assert_refused_pair(str(error.value), crafted_dataset)


def test_crafted_pair_is_refused_when_a_sample_is_read(crafted_dataset):
    # the dataset training iterates reads pairs the same safe way (say the file changed after grouping):
    # upstream's own LMDBDataset, patched by patches/0018
    from cn_clip.training.data import LMDBDataset

    dataset = LMDBDataset(str(crafted_dataset.split), split="train", max_txt_length=16, resolution=32)
    image, text, eos_index = dataset[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 < eos_index < 16
    with pytest.raises(UserError) as error:
        dataset[1]
    _assert_refused_pair(str(error.value), crafted_dataset)
    # what upstream's own LMDBDataset would have done with the same value, for the record
    assert pickle.loads(pickle.dumps((0, 0, "x"))) == (0, 0, "x")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_pair_loads_reads_plain_pairs_and_refuses_globals_at_any_protocol(tmp_path, protocol):
    assert safe_pair_loads(pickle.dumps((3, 7, "一张皮卡丘的图片"), protocol=protocol), "w") == (3, 7, "一张皮卡丘的图片")
    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="refused and not executed"):
        safe_pair_loads(pickle.dumps(RunsCommand(f"touch {marker}"), protocol=protocol), pair_location("db", b"5"))
    assert not marker.exists()


def test_safe_pair_loads_refuses_copyreg_extensions_even_when_already_resolved(tmp_path):
    # EXT1 names a global by a number from copyreg's registry; once any unpickler has resolved it, the C
    # unpickler takes it from a cache without asking find_class, so the opcode itself must be refused
    marker = tmp_path / "ran"
    code = 0xF0
    copyreg.add_extension("os", "system", code)
    try:
        crafted = b"\x80\x02\x82" + bytes([code]) + pickle.dumps(f"touch {marker}", protocol=2)[2:-1] + b"\x85R."
        pickle.loads(crafted)  # the plain unpickler runs it and fills the cache
        assert marker.exists()
        marker.unlink()
        with pytest.raises(UserError, match="EXT1"):
            safe_pair_loads(crafted, pair_location("db", b"9"))
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize(
    "value, says",
    [(b"\x80\x04garbage", "not a readable pickle"), (pickle.dumps({"a": 1}), "EMPTY_DICT"), (pickle.dumps((1, 2)), "tuple"), (None, "missing")],
)
def test_safe_pair_loads_names_other_damage(value, says):
    with pytest.raises(UserError, match=says) as error:
        safe_pair_loads(value, pair_location("/data/lmdb/train/pairs", b"4"))
    assert "/data/lmdb/train/pairs key '4'" in str(error.value)


# --------------------------------------------------------------------------- the 48 GiB checkpoint


@pytest.fixture
def no_real_model(monkeypatch):
    """Fails the test if a CLIP is built anywhere but on the meta device (which allocates nothing)."""
    import functools

    real_clip = clip_model.CLIP

    @functools.wraps(real_clip)
    def only_on_meta(*args, **kwargs):
        assert torch.get_default_device().type == "meta", "a real model was allocated from an unchecked config"
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(clip_model, "CLIP", only_on_meta)


def _huge_config():
    config = ckpt.model_config_for("ViT-B-16", "RoBERTa-wwm-ext-base-chinese")
    config["model_info"]["vision_width"] = 65536  # ~48 GiB of fp32 in the vision tower alone
    return config


def _assert_refused_fast(path, started, rss_before, says):
    with pytest.raises(UserError) as error:
        ckpt.load_model(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and "\n" not in message and says in message
    assert time.monotonic() - started < 20
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 512
    return message


def test_tiny_checkpoint_asking_for_a_huge_model_is_refused_before_allocating(tmp_path, no_real_model):
    path = tmp_path / "2kb.pt"
    torch.save({"model_config": _huge_config(), "state_dict": {"module.visual.conv1.weight": torch.zeros(1, 3, 1, 1)}}, path)
    assert path.stat().st_size < 4096
    started, rss = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = _assert_refused_fast(path, started, rss, "visual.transformer.resblocks.0.*")
    assert "vision_layers=12" in message


@pytest.fixture(scope="module")
def tiny_weights():
    """Honest weights of the registered tiny architecture (built before any guard is in place)."""
    config, model = random_clip()
    return config, model.state_dict()


def test_real_weights_with_an_edited_width_are_refused_before_allocating(tmp_path, tiny_weights, no_real_model):
    # every layer there, only the config lies: the meta-device shape check names the key
    config, weights = tiny_weights
    edited = dict(config, model_info=dict(config["model_info"], vision_width=65536))
    path = tmp_path / "edited.pt"
    torch.save({"model_config": edited, "state_dict": weights}, path)
    started, rss = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = _assert_refused_fast(path, started, rss, "does not match its weights")
    assert "visual." in message and "vision_width=65536 (the weights say 128)" in message


def test_huge_checkpoint_through_the_command_line_is_one_line(tmp_path, capsys):
    path = tmp_path / "2kb.pt"
    torch.save({"model_config": _huge_config(), "state_dict": {"module.visual.conv1.weight": torch.zeros(1, 3, 1, 1)}}, path)
    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    assert main(["classify", str(picture), "--checkpoint", str(path), "--names", "皮卡丘", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("cn-clip-pokemon: error:") and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


# --------------------------------------------------------------------------- command lines


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, tiny_weights):
    """A real tiny checkpoint, a picture, a plain file to put paths under, and a GBK text file."""
    folder = tmp_path_factory.mktemp("cli")
    config, weights = tiny_weights
    checkpoint = folder / "tiny.pt"
    torch.save({"model_config": config, "state_dict": weights}, checkpoint)
    picture = folder / "p.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(picture)
    a_file = folder / "notes.txt"
    a_file.write_text("a file, not a folder\n", encoding="utf-8")
    gbk = folder / "names_gbk.txt"
    gbk.write_bytes("皮卡丘\n噴火龍\n".encode("gbk"))
    return SimpleNamespace(checkpoint=checkpoint, picture=picture, a_file=a_file, gbk=gbk, dataset=folder / "dataset")


def _classify(files, *extra):
    return ["classify", str(files.picture), "--checkpoint", str(files.checkpoint), "--names", "皮卡丘", "雷丘", *extra]


def _search(files, *extra):
    return ["search", *extra, "--checkpoint", str(files.checkpoint), "--dataset", str(files.dataset)]


def _evaluate(files, *extra):
    return ["evaluate", "--checkpoint", str(files.checkpoint), "--dataset", str(files.dataset), *extra]


# (argv builder, exit code, what the one error line says): 2 for bad usage, 1 for a failure
BAD_COMMAND_LINES = {
    "template-with-a-field": (lambda f: _classify(f, "--template", "一张{}的{x}"), 2, "brace besides the one {}"),
    "template-with-a-lone-brace": (lambda f: _classify(f, "--template", "一张{}的图{"), 2, "brace besides the one {}"),
    "template-without-a-place": (lambda f: _classify(f, "--template", "一张图片"), 2, "exactly one {}"),
    "batch-size-0": (lambda f: _classify(f, "--batch-size", "0"), 2, "--batch-size: must be at least 1"),
    "batch-size-word": (lambda f: _classify(f, "--batch-size", "many"), 2, "'many' is not a whole number"),
    "device-tpu": (lambda f: _classify(f, "--device", "tpu"), 2, "unknown device 'tpu'"),
    "classify-top-k-0": (lambda f: _classify(f, "--top-k", "0"), 2, "--top-k: must be at least 1"),
    "classify-out-under-a-file": (lambda f: _classify(f, "--out", str(f.a_file / "grid.png")), 2, "is a file, not a folder"),
    "search-empty-text": (lambda f: _search(f, ""), 2, "the search text is empty"),
    "search-blank-text": (lambda f: _search(f, "   "), 2, "the search text is empty"),
    "search-top-k-0": (lambda f: _search(f, "皮卡丘", "--top-k", "0"), 2, "--top-k: must be at least 1"),
    "search-out-under-a-file": (lambda f: _search(f, "皮卡丘", "--out", str(f.a_file / "g.png")), 2, "is a file, not a folder"),
    "evaluate-predictions-under-a-file": (lambda f: _evaluate(f, "--predictions", str(f.a_file / "preds")), 2, "is a file"),
    "evaluate-predictions-is-a-file": (lambda f: _evaluate(f, "--predictions", str(f.a_file)), 2, "is a file, not a folder"),
    "evaluate-out-under-a-file": (lambda f: _evaluate(f, "--out", str(f.a_file / "w.png")), 2, "is a file, not a folder"),
    "evaluate-batch-size-0": (lambda f: _evaluate(f, "--batch-size", "0"), 2, "must be at least 1"),
    "missing-required-option": (lambda f: ["classify", str(f.picture)], 2, "--checkpoint"),
    "t2s-gbk-in-place": (lambda f: ["t2s", str(f.gbk), "--in-place"], 1, "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_bad_command_lines_get_one_line_and_the_right_exit_code(cli_files, capsys, case):
    argv_of, code, says = BAD_COMMAND_LINES[case]
    gbk_before = cli_files.gbk.read_bytes()
    assert main(argv_of(cli_files)) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cn-clip-pokemon: error: "), captured.err
    assert says in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""
    assert cli_files.gbk.read_bytes() == gbk_before  # t2s left the file as it was


def test_a_picture_that_cannot_be_read_is_reported_once(cli_files, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    argv = _classify(cli_files, "--device", "cpu")
    argv.insert(2, str(broken))
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("broken.png") == 1 and captured.err.count("error") == 1  # (progress bars aside)
    assert "broken.png" not in captured.out and str(cli_files.picture) in captured.out


def test_a_closed_output_pipe_ends_quietly():
    # `cn-clip-pokemon plugins --json | head -1`, with the reader gone before anything is written
    process = subprocess.Popen(
        [sys.executable, "-m", "cn_clip_pokemon", "plugins", "--json"],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()
    errors = process.stderr.read().decode("utf-8", "replace")
    process.stderr.close()
    assert process.wait(timeout=120) == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors and errors == ""


def test_head_reading_one_line_of_plugins_json_sees_no_traceback():
    result = subprocess.run(
        f"'{sys.executable}' -m cn_clip_pokemon plugins --json | head -1",
        shell=True, cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
    )
    assert result.stdout == "[\n" and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
