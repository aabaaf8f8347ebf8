"""`pip install cn-clip-pokemon` without a clone: the sdist and the wheel built with the standard tool
(`python -m build`, the wheel made from the sdist), the wheel installed with pip into a fresh virtual
environment in an empty folder, and the run scripts run from there through `cn-clip-pokemon
run-script`: the tiny CPU one, and the ViT-B-16 one from an official-format file, one step each.

The fresh environment gets no second copy of torch and cn_clip: a .pth file adds the test
environment's site-packages to its path (a path in a .pth file does not run that folder's own .pth
files, so this repository's editable install stays out of it). The commands run with PATH=/usr/bin:/bin,
so the `cn-clip-pokemon train` inside the scripts can only be the fresh environment's.

Building and installing take ~20 s; the ViT-B-16 step a minute or two on two cores (see
tests/test_vit_b16_cpu.py), and ~5 GB of checkpoints, removed at the end.
"""
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import cpu_env, load_checkpoint, random_checkpoint

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/bin:/bin"
SCRIPT_TO_EDIT = "pokemon_finetune_vit-b-16.sh"
# files that `python -m build` adds to an sdist, beside what MANIFEST.in takes from the tree (setup.cfg is
# the clone's, pytest's settings, with the build's [egg_info] section added)
GENERATED = {"PKG-INFO"}
# what a user's clone may hold that is no part of the project (MANIFEST.in must leave it out)
JUNK = ["tests/__pycache__/conftest.cpython-311.pyc", "examples/cn-clip-shapes/build/lib/cn_clip_shapes/__init__.py",
        "examples/cn-clip-shapes/cn_clip_shapes.egg-info/PKG-INFO", "cn_clip_pokemon/__pycache__/cli.cpython-311.pyc"]


def project_files():
    """The files a clone has: tracked ones and new ones git does not ignore (present on disk)."""
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: the sdist's file list is compared with `git ls-files`")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return sorted(name for name in listed if name and (REPO / name).is_file())


def run(command, cwd, timeout=600, **env):
    environment = cpu_env()
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        environment.pop(name, None)
    environment.update(PATH=SYSTEM_PATH, **env)
    return subprocess.run([str(c) for c in command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, files): built from a copy of the clone's files (the shared tree gets no build
    output, and no leftover SOURCES.txt of an earlier build can add files to the sdist), with junk added."""
    files = project_files()
    source = tmp_path_factory.mktemp("clone") / "cn-clip-pokemon"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in JUNK:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("not part of the project\n")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = dist.glob("cn_clip_pokemon-*.tar.gz")
    (wheel,) = dist.glob("cn_clip_pokemon-*.whl")
    return sdist, wheel, files


def test_the_sdist_carries_what_a_clone_has(built):
    sdist, _, files = built
    with tarfile.open(sdist) as archive:
        names = [member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()]
    carried = {name for name in names if not name.startswith("cn_clip_pokemon.egg-info/") and name not in GENERATED}
    assert sorted(set(files) - carried) == [], "in the clone but not in the sdist: add them to MANIFEST.in"
    assert sorted(carried - set(files)) == [], "in the sdist but no part of the clone: exclude them in MANIFEST.in"
    for name in ("README.md", "README_En.md", "MANIFEST.in", "run_scripts/pokemon_finetune_vit-b-16.sh", "tests/conftest.py"):
        assert name in carried


def test_the_wheel_carries_the_run_scripts_and_the_patches(built):
    _, wheel, files = built
    with zipfile.ZipFile(wheel) as archive:
        inside = {name: archive.read(name) for name in archive.namelist()}
    for folder, package in (("run_scripts", "cn_clip_pokemon/run_scripts"), ("patches", "cn_clip_pokemon/patches")):
        shipped = sorted(name for name in files if name.startswith(folder + "/"))
        assert shipped
        for name in shipped:
            assert inside[name.replace(folder, package, 1)] == (REPO / name).read_bytes(), name
    assert not [name for name in inside if name.startswith(("tests/", "run_scripts/", "patches/", "bench/"))]


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """(venv, empty working folder): the wheel installed by pip into a fresh virtual environment."""
    _, wheel, _ = built
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    done = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    # pip first, into the bare environment (where no other cn-clip-pokemon is visible), then the .pth
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    empty = tmp_path_factory.mktemp("empty-cwd")
    return venv, empty


def test_the_installed_package_is_the_wheel_not_the_repository(installed):
    venv, empty = installed
    assert shutil.which("cn-clip-pokemon", path=SYSTEM_PATH) is None, "a cn-clip-pokemon outside any environment would hide what this tests"
    done = run([venv / "bin" / "python", "-c", "import cn_clip, cn_clip_pokemon; print(cn_clip_pokemon.__file__)"], cwd=empty)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()).is_relative_to(venv), done.stdout
    assert not Path(done.stdout.strip()).is_relative_to(REPO)

    listed = run([venv / "bin" / "cn-clip-pokemon", "run-script", "--list"], cwd=empty)
    assert listed.returncode == 0, listed.stderr
    folder = Path(listed.stdout.splitlines()[0].removeprefix("run scripts in ").rstrip(":"))
    assert folder.is_relative_to(venv) and folder.name == "run_scripts" and folder.parent.name == "cn_clip_pokemon"
    assert "pokemon_finetune_vit-b-16  " in listed.stdout and "on one GPU." in listed.stdout

    copies = empty / "my-scripts"
    copied = run([venv / "bin" / "cn-clip-pokemon", "run-script", "--copy", copies], cwd=empty)
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in copies.iterdir()) == sorted(p.name for p in (REPO / "run_scripts").glob("*.sh"))
    for path in copies.iterdir():
        assert path.read_bytes() == (REPO / "run_scripts" / path.name).read_bytes()
    shutil.rmtree(copies)


def _datapath(root, sprite_dataset):
    datapath = root / "data"
    (datapath / "datasets").mkdir(parents=True)
    (datapath / "datasets" / "pokemon").symlink_to(sprite_dataset, target_is_directory=True)
    return datapath


def test_installed_tiny_cpu_script_trains(installed, sprite_dataset, tmp_path):
    venv, empty = installed
    datapath = _datapath(tmp_path, sprite_dataset)
    result = run(
        [venv / "bin" / "cn-clip-pokemon", "run-script", "pokemon_finetune_tiny_cpu", datapath,
         "--max-steps", "1", "--batch-size", "8"],
        cwd=empty,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    latest = load_checkpoint(datapath / "experiments" / "pokemon_tiny_cpu" / "checkpoints" / "epoch_latest.pt")
    assert latest["step"] == 1
    from cn_clip_pokemon.demo_recipes import TINY, recipe_flag

    assert latest["model_config"]["vision_model"] == recipe_flag(TINY, "--vision-model")  # the script's, the demo's
    assert list(empty.iterdir()) == [], "the run wrote into the working folder"


def test_installed_vit_b16_script_takes_one_step_from_an_official_format_file(installed, sprite_dataset, tmp_path):
    venv, empty = installed
    datapath = _datapath(tmp_path, sprite_dataset)
    weights = datapath / "pretrained_weights" / "clip_cn_vit-b-16.pt"
    random_checkpoint(weights, "ViT-B-16", "RoBERTa-wwm-ext-base-chinese", release=True)
    released = load_checkpoint(weights)["state_dict"]["module.visual.proj"]
    run_dir = datapath / "experiments" / "pokemon_finetune_vit-b-16"
    try:
        result = run(
            [venv / "bin" / "cn-clip-pokemon", "run-script", "pokemon_finetune_vit-b-16.sh", datapath,
             "--max-steps", "1", "--batch-size", "2", "--valid-batch-size", "2", "--precision", "fp32",
             "--num-workers", "0", "--valid-num-workers", "0", "--use-flash-attention"],
            cwd=empty,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert f"loaded checkpoint '{weights}'" in result.stdout + result.stderr
        latest = load_checkpoint(run_dir / "checkpoints" / "epoch_latest.pt")
        assert latest["step"] == 1
        assert latest["model_config"]["vision_model"] == "ViT-B-16"
        assert not torch.equal(latest["state_dict"]["module.visual.proj"], released.float())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # ~5 GB
        weights.unlink(missing_ok=True)


# --- the command in a clone (no build): it finds the repository's run_scripts/ ---------------------


def test_run_script_in_a_clone_runs_the_repositorys_script(tmp_path):
    missing = tmp_path / "no-data"
    for name in ("pokemon_finetune_tiny_cpu", "pokemon_finetune_tiny_cpu.sh"):
        done = subprocess.run(
            [sys.executable, "-m", "cn_clip_pokemon", "run-script", name, str(missing)],
            cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert f"{missing}/datasets/pokemon/lmdb/train not found" in done.stderr  # the script's own check ran


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give a run script NAME"),
        (["pokemon_finetune"], "no run script 'pokemon_finetune'; the run scripts are: finetune_vit-b-16_rbt-base,"),
        (["pokemon_finetune_vit-b-16"], "pokemon_finetune_vit-b-16 needs ${DATAPATH}: cn-clip-pokemon run-script pokemon_finetune_vit-b-16 ${DATAPATH}"),
        (["finetune_vit-b-16_rbt-base", "/data"], "needs MUGE|Flickr30k-CN ${DATAPATH}"),
        (["--list", "pokemon_finetune_vit-b-16"], "not both"),
        (["--copy", "setup.py"], "setup.py is a file, not a folder"),
    ],
)
def test_run_script_usage_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    from cn_clip_pokemon.cli import main

    monkeypatch.chdir(REPO)
    assert main(["run-script", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_run_script_help_shows_the_scripts_header(capsys):
    from cn_clip_pokemon.cli import main

    assert main(["run-script", "pokemon_finetune_vit-b-16", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cn-clip-pokemon run-script pokemon_finetune_vit-b-16 ${DATAPATH}")
    assert "Why these numbers, on one GPU:" in out and "--keep-checkpoints 2" in out


def test_run_script_copy_never_overwrites_an_edited_script(tmp_path, capsys):
    from cn_clip_pokemon.cli import main

    target = tmp_path / "mine"
    target.mkdir()
    edited = target / SCRIPT_TO_EDIT
    edited.write_text("#!/usr/bin/env bash\n# my own edits\n")
    assert main(["run-script", "--copy", str(target)]) == 1
    assert f"{edited} exists and differs" in capsys.readouterr().err
    assert edited.read_text() == "#!/usr/bin/env bash\n# my own edits\n"
    assert [p.name for p in target.iterdir()] == [SCRIPT_TO_EDIT], "nothing is copied when one file is refused"
    edited.unlink()
    assert main(["run-script", "--copy", str(target)]) == 0
    assert main(["run-script", "--copy", str(target)]) == 0  # again: every file unchanged
    assert capsys.readouterr().out.count("unchanged: ") == len(list((REPO / "run_scripts").glob("*.sh")))
    assert os.access(target / SCRIPT_TO_EDIT, os.X_OK)

