"""Every command in README.md and README_En.md is checked, so the READMEs cannot drift from the code.

Cheap commands run for real (in a scratch ${DATAPATH} with a few generated pictures); the others must
parse: their subcommand's --help exits 0 and lists every flag the README uses. Run scripts must exist,
parse with `bash -n`, and refuse a missing ${DATAPATH} with a message naming it.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "README_En.md"]
RUN_FOR_REAL = {"plugins", "patches", "t2s", "build-dataset"}


def code_blocks(readme, language):
    text = (REPO / readme).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def command_lines(readme):
    lines = []
    for block in code_blocks(readme, "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def all_command_lines():
    return sorted({line for readme in READMES for line in command_lines(readme)})


def test_the_first_two_commands_are_the_demo_and_the_tests():
    for readme in READMES:
        first, second = code_blocks(readme, "bash")[:2]
        assert first.strip().endswith("cn-clip-pokemon demo"), readme
        assert "python -m pytest" in second, readme
        assert first.split("&& pip install -e .")[0] == second.split("&& pip install -e")[0], readme
    # CI runs exactly the README's test command
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "README.md" in ci and "pytest" in ci


def test_both_readmes_show_the_same_commands():
    assert command_lines("README.md") == command_lines("README_En.md")


@pytest.fixture
def scratch_datapath(tmp_path):
    """A working folder with imgs/ (a few pictures named as users do) and an empty ${DATAPATH}."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    colours = {"0001妙蛙种子.png": "green", "0004小火龍.png": "orange", "0007杰尼龟.png": "blue", "0025-皮卡丘.png": "yellow"}
    for name, colour in colours.items():
        Image.new("RGBA", (40, 30), colour).save(imgs / name)
    datapath = tmp_path / "data"
    # ${DATAPATH}/pictures as fetch-sprites lays it out: a folder per Pokemon, several views
    for folder, colour in (("0001妙蛙种子", "green"), ("0025皮卡丘", "yellow")):
        (datapath / "pictures" / folder).mkdir(parents=True)
        for view, size in (("front_00", (30, 30)), ("back_00", (20, 36)), ("shiny_00", (36, 20))):
            Image.new("RGBA", size, colour).save(datapath / "pictures" / folder / f"{view}.png")
    # any captions: photos/ named by caption (a folder for several pictures), and captions.csv naming them
    for name, colour in (("红色圆形.png", "red"), ("蓝色方块.png", "blue"), ("绿色三角/1.png", "green"), ("绿色三角/2.png", "lime")):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 30), colour).save(tmp_path / "photos" / name)
    (tmp_path / "captions.csv").write_text(
        "path,caption\nphotos/红色圆形.png,红色圆形\nphotos/红色圆形.png,一个红圈\nphotos/蓝色方块.png,蓝色方块\n"
        "photos/绿色三角/1.png,绿色三角\n",
        encoding="utf-8",
    )
    env = dict(os.environ, DATAPATH=str(datapath), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return tmp_path, env


def _subcommand(line):
    words = shlex.split(line)
    return words[1] if len(words) > 1 and not words[1].startswith("-") else None


@pytest.mark.parametrize("line", [l for l in all_command_lines() if l.startswith("cn-clip-pokemon")])
def test_readme_command(line, scratch_datapath):
    cwd, env = scratch_datapath
    sub = _subcommand(line)
    if sub in RUN_FOR_REAL or sub is None:
        expanded = os.path.expandvars(line.replace("${DATAPATH}", env["DATAPATH"]))
        done = subprocess.run(expanded, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if sub == "t2s":
            assert (cwd / "imgs" / "0004小火龙.png").exists() and not (cwd / "imgs" / "0004小火龍.png").exists()
        if sub == "build-dataset":
            from cn_clip.training.data import LMDBDataset

            out = Path(shlex.split(expanded)[shlex.split(expanded).index("--out") + 1])
            dataset = LMDBDataset(str(cwd / out / "lmdb" / "train"), split="train")
            assert len(dataset) > 0
        return
    done = subprocess.run(
        [sys.executable, "-m", "cn_clip_pokemon", sub, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flags = set(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", line))
    missing = [flag for flag in flags if flag not in done.stdout]
    assert not missing, f"`cn-clip-pokemon {sub} --help` does not know {missing} used in the README"


@pytest.mark.parametrize("line", [l for l in all_command_lines() if l.startswith("bash run_scripts/")])
def test_readme_run_script(line, tmp_path):
    script = REPO / shlex.split(line)[1]
    assert script.is_file(), f"{script} is missing"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    missing = tmp_path / "no-such-datapath"
    done = subprocess.run(["bash", str(script), str(missing)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(missing) in done.stdout + done.stderr, "the script must name the missing folder"


@pytest.mark.parametrize("readme", READMES)
def test_readme_python_snippets_name_real_things(readme):
    import importlib

    snippets = code_blocks(readme, "python")
    assert snippets
    for snippet in snippets:
        compile(snippet, readme, "exec")
        for module, names in re.findall(r"^from (\S+) import (.+)$", snippet, flags=re.M):
            if module == "setuptools":
                continue
            imported = importlib.import_module(module)
            for name in names.split(","):
                assert hasattr(imported, name.strip()), f"{readme}: {module} has no {name.strip()}"


@pytest.mark.parametrize("line", [l for l in all_command_lines() if l.startswith("python bench/")])
def test_readme_bench(line):
    words = shlex.split(line)
    assert (REPO / words[1]).is_file(), f"{words[1]} is missing"
    done = subprocess.run([sys.executable, words[1], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    missing = [word.split("=")[0] for word in words[2:] if word.startswith("--") and word.split("=")[0] not in done.stdout]
    assert not missing, f"`{words[1]} --help` does not know {missing} used in the README"


def test_other_lines_are_known():
    # CN_CLIP_POKEMON_PLUGINS= lines and the plugin walkthrough run for real in tests/test_example_plugin.py;
    # upstream's tools run after `import cn_clip_pokemon`: their flags are checked in tests/test_upstream_tools.py
    known = (
        "cn-clip-pokemon", "bash run_scripts/", "python3 -m venv", "export DATAPATH=", "pip install", "python bench/", "CN_CLIP_POKEMON_PLUGINS=",
        'python -c "import cn_clip_pokemon, runpy;',
        "bash bench/gpu_check.sh",  # its --smoke mode runs in tests/test_gpu_check.py
    )
    for line in all_command_lines():
        assert line.startswith(known), f"the README shows a command no test checks: {line}"


@pytest.mark.parametrize("readme", READMES)
def test_patch_table_lists_every_patch(readme):
    """The README's table of patches names exactly the files in patches/."""
    import re

    text = (REPO / readme).read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(\d{4}-[\w-]+)` \|", text, flags=re.M))
    shipped = {path.stem for path in (REPO / "patches").glob("*.patch")}
    assert listed == shipped


@pytest.mark.parametrize("readme, heading", [("README.md", "## 代码结构"), ("README_En.md", "## Code layout")])
def test_code_layout_names_every_module(readme, heading):
    """The README's code layout names every module of the package, and no module that is gone."""
    text = (REPO / readme).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    package = REPO / "cn_clip_pokemon"
    expected = set()
    for path in package.rglob("*.py"):
        if path.stem in ("__init__", "__main__"):
            continue
        folder = path.parent.relative_to(package)
        # top-level modules as `name.py`; a sub-package as `folder/` with its modules as `name`
        expected.add(f"`{path.name}`" if folder == Path(".") else f"`{path.stem}`")
        if folder != Path("."):
            expected.add(f"`{folder.as_posix()}/`")
    named = set(re.findall(r"`[\w/]+(?:\.py)?/?`", section))
    assert expected - named == set(), f"modules missing from {readme}'s {heading}"
    gone = {name for name in named if name.endswith(".py`") and "/" not in name} - expected
    assert gone == set(), f"{readme}'s {heading} names modules that do not exist"
