"""A standing corpus of hostile inputs for the commands beyond the builder's pictures, run through
the real command line (`python -m cn_clip_pokemon ...` in a subprocess, or cli.main).

Every case snapshots the user's files before and after (nothing lost), and checks the exit code
and that an error is one line, never a traceback:

- what a command may delete (owned_files.py): fetch-sprites rerun over its own folder keeps the user's
  additions; demo --fresh deletes only what the demo wrote, even when the demo then fails, and
  refuses a folder it did not make; a kill -9 during a checkpoint save leaves a temporary file that
  the next save and the next training run remove, never a live save's;
- reading files we did not write (safe_reading.py): t2s keeps JSON as written (numbers, keys that would
  collide, a symlink's target), a FIFO is refused without waiting, JSON nested 100,000 deep is one
  line; a CSV manifest row over csv's field limit costs that row only;
- writing: a full disk during a rebuild (a 2 MiB tmpfs) is one line and the old dataset survives;
  a non-UTF-8 --out is a usage error.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import POKEMON_TGZ, SPRITES_TGZ, cpu_env, train_command

COMMAND = [sys.executable, "-m", "cn_clip_pokemon"]


# ---------------------------------------------------------------- helpers


def snapshot(root):
    """``{relative path: what it is}`` for everything under ``root``: a file's SHA-256, a link's target."""
    found = {}
    root = Path(root)
    for directory, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "link -> " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "folder"
            elif path.is_file():
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[relative] = "special"
    return found


def assert_kept(before, after, paths=None):
    """Every path of ``before`` (or of ``paths``) is in ``after``, the same."""
    for path in paths if paths is not None else before:
        assert after.get(path) == before[path], f"{path} was lost or changed"


def run(*arguments, timeout=300):
    """``cn-clip-pokemon ARGUMENTS`` in its own process."""
    return subprocess.run([*COMMAND, *(a if isinstance(a, bytes) else str(a) for a in arguments)],
                          capture_output=True, text=True, timeout=timeout, env=cpu_env())


def assert_one_line_error(result, code=1, says=()):
    """``result`` failed with ``code`` and said why in one line, without a traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr[-2000:]}"
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("cn-clip-pokemon: error:")]
    assert errors and lines[-1] == errors[-1], result.stderr[-3000:]  # the error is the last thing said
    # one error line; the demo's line naming a failed stage follows that stage's own one
    assert len(errors) == 1 or (len(errors) == 2 and errors[-1].startswith("cn-clip-pokemon: error: stage '")), \
        result.stderr[-3000:]
    last = errors[-1]
    for text in says:
        assert text in last, last
    return last


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]


def sprite_arguments(shared_datasets, cache, *extra):
    return ["fetch-sprites", "--from", shared_datasets / SPRITES_TGZ, "--from", shared_datasets / POKEMON_TGZ,
            "--cache", cache, "--no-progress", *extra]


def picture(path, colour, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


# ---------------------------------------------------------------- fetch-sprites: only what it wrote


def test_fetch_sprites_rerun_keeps_what_the_user_added(shared_datasets, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "pictures"
    first = run(*sprite_arguments(shared_datasets, cache, "--numbers", "1-2", "--frames", "2", "--out", out))
    assert first.returncode == 0, first.stderr
    (out / "my_notes.txt").write_text("我的笔记", encoding="utf-8")
    picture(out / "0001妙蛙种子" / "my_own_photo.jpg", (200, 10, 10))
    picture(out / "my_album" / "deep" / "holiday.png", (10, 200, 10))
    os.symlink("my_notes.txt", out / "notes-link")
    os.mkfifo(out / "0002妙蛙草" / "a-fifo")
    user = ["my_notes.txt", "0001妙蛙种子/my_own_photo.jpg", "my_album", "my_album/deep", "my_album/deep/holiday.png",
            "notes-link", "0002妙蛙草/a-fifo"]
    before = snapshot(out)

    # fewer frames and other Pokemon: the first run's files go, the user's stay
    second = run(*sprite_arguments(shared_datasets, cache, "--numbers", "2-3", "--frames", "1", "--out", out))
    assert second.returncode == 0, second.stderr
    assert_no_traceback(second)
    after = snapshot(out)
    assert_kept(before, after, user)
    assert "kept 5 entries fetch-sprites did not write" in second.stdout
    assert not (out / "0001妙蛙种子" / "front_00.png").exists()  # #1 is no longer asked for
    assert not (out / "0002妙蛙草" / "front_01.png").exists()  # one frame now
    assert (out / "0003妙蛙花" / "front_00.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    # a name this run would write, which the user made: refused before anything changes
    picture(out / "0003妙蛙花" / "front_01.png", (1, 2, 3))
    before = snapshot(out)
    third = run(*sprite_arguments(shared_datasets, cache, "--numbers", "3", "--frames", "2", "--out", out))
    assert_one_line_error(third, 1, ["0003妙蛙花/front_01.png", "was not written by fetch-sprites", "nothing was changed"])
    assert snapshot(out) == before


def test_fetch_sprites_refuses_a_folder_it_did_not_make(shared_datasets, tmp_path):
    folder = tmp_path / "my-photos"
    picture(folder / "holiday.png", (5, 5, 5))
    before = snapshot(folder)
    result = run(*sprite_arguments(shared_datasets, tmp_path / "cache", "--numbers", "1", "--frames", "1", "--out", folder))
    assert_one_line_error(result, 1, ["not made by fetch-sprites"])
    assert snapshot(folder) == before


def test_fetch_sprites_killed_then_rerun_removes_only_its_leftover(shared_datasets, tmp_path):
    """A temporary folder left by a kill -9 holds the new sprites and hard links to the user's files:
    the next run removes it, and the user's files are still in --out."""
    cache = tmp_path / "cache"
    out = tmp_path / "pictures"
    assert run(*sprite_arguments(shared_datasets, cache, "--numbers", "25", "--frames", "1", "--out", out)).returncode == 0
    (out / "my_notes.txt").write_text("keep me", encoding="utf-8")
    before = snapshot(out)
    command = [*COMMAND, *map(str, sprite_arguments(shared_datasets, cache, "--numbers", "1-151", "--frames", "2",
                                                    "--workers", "1", "--out", out))]
    process = subprocess.Popen(command, env=cpu_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".pictures.tmp-")]
            if temps and len(list(temps[0].glob("*/*.png"))) > 20:  # well into the run
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".pictures.tmp-")], "no run was under way to kill"
    assert snapshot(out) == before  # the killed run changed nothing in --out
    rerun = run(*sprite_arguments(shared_datasets, cache, "--numbers", "25", "--frames", "1", "--out", out))
    assert rerun.returncode == 0, rerun.stderr
    assert "note: removed" in rerun.stdout and "left by an interrupted fetch-sprites" in rerun.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert_kept(before, snapshot(out), ["my_notes.txt"])


# ---------------------------------------------------------------- demo --fresh: only what the demo wrote


def demo_arguments(shared_datasets, workdir, *extra, sprites=None):
    sprites = sprites or [shared_datasets / SPRITES_TGZ, shared_datasets / POKEMON_TGZ]
    arguments = ["demo", "--workdir", workdir, "--numbers", "25", "--frames", "1"]
    for tarball in sprites:
        arguments += ["--sprites-from", tarball]
    return arguments + list(extra)


def test_demo_fresh_refuses_a_folder_the_demo_did_not_make(shared_datasets, tmp_path):
    workdir = tmp_path / "my-work"
    (workdir / "thesis").mkdir(parents=True)
    (workdir / "thesis" / "chapter1.tex").write_text("\\chapter{}", encoding="utf-8")
    before = snapshot(workdir)
    result = run(*demo_arguments(shared_datasets, workdir, "--fresh"))
    assert_one_line_error(result, 1, ["--fresh deletes only what the demo wrote", "nothing was deleted"])
    assert snapshot(workdir) == before


def test_demo_fresh_deletes_only_what_the_demo_wrote_even_when_it_then_fails(shared_datasets, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    # the user's file where the demo wants its datasets folder: the first run stops at its first build
    (workdir / "datasets").write_text("mine", encoding="utf-8")
    first = run(*demo_arguments(shared_datasets, workdir))
    assert_one_line_error(first, 1, ["build dataset"])
    assert (workdir / "pictures" / "0025皮卡丘" / "front_00.png").exists()  # fetch-sprites ran
    (workdir / "my_notes.txt").write_text("notes", encoding="utf-8")
    picture(workdir / "pictures" / "0025皮卡丘" / "my_own_photo.jpg", (9, 9, 9))
    user = ["datasets", "my_notes.txt", "pictures/0025皮卡丘/my_own_photo.jpg"]
    before = snapshot(workdir)

    # --fresh, then a stage fails (a tarball that is neither package): the demo's files are gone,
    # the user's are all there
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a package")
    second = run(*demo_arguments(shared_datasets, workdir, "--fresh", sprites=[bad]))
    assert_one_line_error(second, 1, ["fetch sprites"])
    assert "removed" in second.stdout and "kept 3 entries the demo did not write" in second.stdout
    after = snapshot(workdir)
    assert_kept(before, after, user)
    assert sorted(after) == sorted(user + ["pictures", "pictures/0025皮卡丘", ".cn-clip-pokemon-demo.json"])


# ---------------------------------------------------------------- kill -9 while saving a checkpoint

SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    import torch
    from cn_clip_pokemon.checkpoint import atomic_torch_save

    class SlowToPickle:
        # torch.save pickles this after the tensor: the temporary file is then written and open
        def __reduce__(self):
            print("saving", flush=True)
            time.sleep(600)
            return (int, (0,))

    atomic_torch_save({"state_dict": {"w": torch.zeros(1 << 18)}, "slow": SlowToPickle()}, sys.argv[1])
    """
)


def start_slow_save(path, tmp_path):
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE, encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(script), str(path)], env=cpu_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saving"
    return process


def temporaries(folder, name):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def save_now(path):
    """The next save of ``path``, in this process (the killed and the live saves are other processes)."""
    import torch

    from cn_clip_pokemon.checkpoint import atomic_torch_save

    atomic_torch_save({"x": torch.ones(3)}, path)


def test_kill_9_during_a_checkpoint_save_leaves_nothing_the_next_save_keeps(tmp_path):
    checkpoints = tmp_path / "logs" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    latest = checkpoints / "epoch_latest.pt"
    (checkpoints / "notes.tmp").write_text("mine", encoding="utf-8")  # the user's, never taken for ours
    killed = start_slow_save(latest, tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    stale = temporaries(checkpoints, "epoch_latest.pt")
    assert len(stale) == 1 and not latest.exists()

    live = start_slow_save(latest, tmp_path)  # a save under way in another process
    try:
        live_temp = sorted(set(temporaries(checkpoints, "epoch_latest.pt")) - set(stale))
        save_now(latest)  # the next save of that name
        assert temporaries(checkpoints, "epoch_latest.pt") == live_temp  # the killed one gone, the live one kept
    finally:
        live.kill()
        live.wait(timeout=30)
    save_now(latest)
    assert temporaries(checkpoints, "epoch_latest.pt") == []
    assert (checkpoints / "notes.tmp").read_text(encoding="utf-8") == "mine"


def test_the_next_training_run_removes_what_a_killed_save_left(runner, sprite_dataset, tmp_path):  # noqa: F811
    logs = tmp_path / "logs"
    checkpoints = logs / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    killed = start_slow_save(checkpoints / "epoch7.pt", tmp_path)  # a name this run never saves
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert len(temporaries(checkpoints, "epoch7.pt")) == 1
    result = subprocess.run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "1"),
                            env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert temporaries(checkpoints, "epoch7.pt") == []
    assert "left by a run killed while saving a checkpoint" in result.stdout + result.stderr


# ---------------------------------------------------------------- t2s: JSON as written


def test_t2s_never_merges_keys_that_would_become_one(tmp_path):
    jsonl = tmp_path / "regions.jsonl"
    content = '{"臺灣": "北部", "台湾": "南部"}\n{"name": "噴火龍"}\n'
    jsonl.write_text(content, encoding="utf-8")
    result = run("t2s", jsonl, "--in-place")
    assert_one_line_error(result, 1, ["regions.jsonl:1", '"臺灣" and "台湾"', "nothing was changed"])
    assert jsonl.read_text(encoding="utf-8") == content
    document = tmp_path / "regions.json"
    document.write_text('{\n "regions": {\n  "臺灣": 1,\n  "台湾": 2\n }\n}\n', encoding="utf-8")
    before = snapshot(tmp_path)
    assert_one_line_error(run("t2s", document, "--in-place"), 1, ["regions.json", "nothing was changed"])
    assert snapshot(tmp_path) == before


def test_t2s_converts_strings_and_keeps_everything_else_as_written(tmp_path):
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text('{"n": 1e400, "x": 1.50, "t": "噴火龍",  "esc": "\\u81fa\\u7063", "t": "again"}\n', encoding="utf-8")
    result = run("t2s", jsonl, "--in-place")
    assert result.returncode == 0, result.stderr
    assert jsonl.read_text(encoding="utf-8") == '{"n": 1e400, "x": 1.50, "t": "喷火龙",  "esc": "台湾", "t": "again"}\n'


def test_t2s_in_place_on_a_symlink_converts_its_target(tmp_path):
    target = tmp_path / "data" / "names.tsv"
    target.parent.mkdir()
    target.write_text("4\t小火龍\n", encoding="utf-8")
    link = tmp_path / "names.tsv"
    os.symlink(os.path.relpath(target, tmp_path), link)
    result = run("t2s", link, "--in-place")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == "data/names.tsv"
    assert target.read_text(encoding="utf-8") == "4\t小火龙\n"


def test_t2s_on_a_fifo_or_deep_json_is_one_line(tmp_path):
    fifo = tmp_path / "texts.jsonl"
    os.mkfifo(fifo)
    assert_one_line_error(run("t2s", fifo, "--in-place", timeout=60), 1, ["FIFO", "nothing was changed"])
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + '"臺灣"' + "]" * 100_000 + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    assert_one_line_error(run("t2s", deep, "--in-place"), 1, ["deep.jsonl:1", "nested more than"])
    document = tmp_path / "deep.json"
    document.write_text('{"a": ' * 100_000 + '"臺灣"' + "}" * 100_000, encoding="utf-8")
    assert_one_line_error(run("t2s", document), 1, ["deep.json", "nested more than"])
    assert_kept(before, snapshot(tmp_path))


# ---------------------------------------------------------------- build-dataset: manifests, FIFOs, disks, names


def test_a_csv_row_over_the_field_limit_costs_that_row_only(tmp_path):
    folder = tmp_path / "manifest"
    for number, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)], 1):
        picture(folder / f"{number}.png", colour)
    manifest = folder / "pairs.csv"
    manifest.write_text(
        "path,caption\n1.png,红色\n2.png," + "长" * 200_000 + "\n3.png,蓝色\n4.png,灰色\n", encoding="utf-8"
    )
    result = run("build-dataset", "--manifest", manifest, "--out", tmp_path / "out", "--no-progress", "--image-size", "16")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert "every input entry accounted for: 3 pictures built, 1 skipped" in result.stdout
    assert "pairs.csv:3: cannot parse the row (field larger than field limit" in result.stdout
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text(encoding="utf-8"))
    assert sorted(info["names"]) == sorted(["红色", "蓝色", "灰色"])

    # a quote left open swallows no later row silently: the rows it spans are named
    manifest.write_text('path,caption\n1.png,红色\n2.png,"绿色\n3.png,蓝色\n', encoding="utf-8")
    result = run("build-dataset", "--manifest", manifest, "--out", tmp_path / "out", "--no-progress", "--image-size", "16")
    assert result.returncode == 0, result.stderr
    assert "pairs.csv:3: cannot parse the row (lines 3-4)" in result.stdout


def test_a_manifest_line_nested_100000_deep_is_a_skipped_row(tmp_path):
    folder = tmp_path / "manifest"
    picture(folder / "1.png", (255, 0, 0))
    picture(folder / "2.png", (0, 0, 255))
    manifest = folder / "pairs.jsonl"
    manifest.write_text(
        json.dumps({"path": "1.png", "caption": "红色"}, ensure_ascii=False) + "\n"
        + '{"path": "2.png", "caption": "蓝色", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        encoding="utf-8",
    )
    result = run("build-dataset", "--manifest", manifest, "--out", tmp_path / "out", "--no-progress", "--image-size", "16")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert "pairs.jsonl:2: not a JSON line (nested more than 100 levels deep)" in result.stdout
    assert "1 pictures built, 1 skipped" in result.stdout

    os.mkfifo(folder / "fifo.jsonl")
    result = run("build-dataset", "--manifest", folder / "fifo.jsonl", "--out", tmp_path / "out2", timeout=60)
    assert_one_line_error(result, 1, ["FIFO"])


def test_a_dataset_info_nested_100000_deep_is_one_line(runner, tmp_path):  # noqa: F811
    from cn_clip_pokemon.dataset_format import load_dataset_info
    from cn_clip_pokemon.errors import UserError

    for name, colour in (("0001妙蛙种子", (255, 0, 0)), ("0004小火龙", (0, 255, 0)), ("0007杰尼龟", (0, 0, 255))):
        picture(tmp_path / "images" / f"{name}.png", colour)
    dataset = tmp_path / "pokemon"
    built = run("build-dataset", "--images", tmp_path / "images", "--out", dataset, "--no-progress", "--image-size", "32")
    assert built.returncode == 0, built.stderr
    info = dataset / "dataset_info.json"
    info.write_text('{"image_size": 32, "images": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(UserError, match="nested more than 100 levels deep; rebuild the dataset"):
        load_dataset_info(dataset)
    before = snapshot(tmp_path)
    result = subprocess.run(train_command(runner, dataset / "lmdb" / "train", tmp_path / "logs", "--max-epochs", "1"),
                            env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert_one_line_error(result, 1, ["dataset_info.json is not valid JSON: nested more than 100 levels deep"])
    assert_kept(before, snapshot(tmp_path))


FIFO_AFTER_SCAN = textwrap.dedent(
    """
    import os, sys
    from cn_clip_pokemon.builder import build
    from cn_clip_pokemon.cli import main

    scan = build.scan_pictures

    def scan_then_swap(*arguments, **options):
        # the picture is replaced by a FIFO after the scan found it, before a worker opens it
        found = scan(*arguments, **options)
        victim = next(p.source for p in found[0] if p.source.endswith("0004小火龙.png"))
        os.unlink(victim)
        os.mkfifo(victim)
        return found

    if __name__ == "__main__":  # worker processes import this file too
        build.scan_pictures = scan_then_swap
        sys.exit(main(sys.argv[1:]))
    """
)


def test_a_picture_replaced_by_a_fifo_after_the_scan_is_skipped_not_waited_on(tmp_path):
    images = tmp_path / "images"
    for name, colour in (("0001妙蛙种子", (255, 0, 0)), ("0004小火龙", (0, 255, 0)), ("0007杰尼龟", (0, 0, 255))):
        picture(images / f"{name}.png", colour)
    script = tmp_path / "fifo_after_scan.py"
    script.write_text(FIFO_AFTER_SCAN, encoding="utf-8")
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        result = subprocess.run([sys.executable, str(script), "build-dataset", "--images", str(images), "--out", str(out),
                                 "--workers", workers, "--no-progress", "--image-size", "16"],
                                env=cpu_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert_no_traceback(result)
        assert "2 pictures built, 1 skipped (1 bad picture)" in result.stdout
        assert "0004小火龙.png: cannot read (a FIFO, not a regular file; not opened)" in result.stdout
        os.unlink(images / "0004小火龙.png")
        picture(images / "0004小火龙.png", (0, 255, 0))


def test_build_dataset_out_not_utf8_is_a_usage_error(tmp_path):
    picture(tmp_path / "images" / "0025皮卡丘.png", (1, 1, 1))
    before = snapshot(tmp_path)
    result = subprocess.run([*COMMAND, "build-dataset", "--images", str(tmp_path / "images"),
                             "--out", os.fsencode(tmp_path) + b"/out\xff"], env=cpu_env(), capture_output=True,
                            text=True, timeout=120)
    assert_one_line_error(result, 2, ["--out", "out\\xff is not valid UTF-8"])
    assert snapshot(tmp_path) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); the test is skipped where one cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and it cannot be mounted here ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_during_a_rebuild_is_one_line_and_the_old_dataset_survives(tmp_path, small_disk):
    import numpy as np

    small = tmp_path / "small"
    for number in (1, 4, 7):
        picture(small / f"{number:04d}.png", (number * 30, 0, 0))
    out = small_disk / "pokemon"
    first = run("build-dataset", "--images", small, "--out", out, "--no-progress", "--image-size", "16")
    assert first.returncode == 0, first.stderr
    before = snapshot(out)

    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for number in range(1, 30):  # incompressible: far more than 2 MiB once stored at 224 px
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(noise / f"{number:04d}.png")
    second = run("build-dataset", "--images", noise, "--out", out, "--no-progress")
    assert_one_line_error(second, 1, ["No space left on device", "the previous dataset", "is as it was"])
    assert snapshot(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["pokemon"]  # no temporary folder left


@pytest.mark.parametrize("flags", [["--numbers", "abc"], ["--frames", "-1"], ["--frames", "0"], ["--numbers", "0-5"], ["--train-minutes", "-1"], ["--train-minutes", "nan"],
                                   ["--minutes", "-1"], ["--minutes", "1", "--train-minutes", "1"]])
def test_demo_arguments_are_usage_errors_before_any_work(tmp_path, flags):
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "cn_clip_pokemon", "demo", "--workdir", str(workdir), *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not workdir.exists()


def test_a_file_we_did_not_write_is_read_without_a_buffer_of_the_limits_size(tmp_path):
    """read_limited under an address-space cap far below its limit: it reads what the file holds."""
    small = tmp_path / "dataset_info.json"
    small.write_text('{"images": 1}', encoding="utf-8")
    code = textwrap.dedent(f"""
        import resource
        from cn_clip_pokemon.safe_reading import read_limited
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        print(read_limited({str(small)!r}, 4 << 30, "an info file").decode())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"images": 1}'
