"""One ViT-B-16 recipe: run_scripts/pokemon_finetune_vit-b-16.sh, `demo --config vit-b-16` and every
ViT-B-16 training command of README.md and README_En.md train with the same effective
hyper-parameters.

"Effective" means as upstream's own ``cn_clip.training.params.parse_args`` reads them, upstream's
defaults included (a command that leaves out --lr trains at upstream's 5e-4, not the recipe's 5e-5),
after the launcher's own flags: --pretrained becomes upstream's --resume FILE --reset-data-offset
--reset-optimizer, and --nproc-per-node x --nnodes processes multiply --batch-size (upstream gathers
every process's features into one loss, so 8 GPUs x 16 is the recipe's 128 pairs per loss, steps and
lr schedule). --valid-batch-size stays per process: upstream validates each process's batches on
their own. Only the data-loading workers may differ (the launcher sizes them to the machine).

The script runs for real (bash, with a stand-in `cn-clip-pokemon` on PATH that records its
arguments), so what is compared is what the script passes, variables expanded.
"""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from cn_clip_pokemon import demo_recipes, patching
from cn_clip_pokemon.launcher import launcher_parser, pretrained_argv

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "README_En.md"]
SCRIPT = "pokemon_finetune_vit-b-16.sh"
NAME = "pokemon_finetune_vit-b-16"
# how fast data is read, sized to the machine by the launcher: not part of the recipe
NOT_COMPARED = {"num_workers", "valid_num_workers"}

RECORDER = """#!/usr/bin/env bash
# stands in for cn-clip-pokemon: records the arguments it was given, one per NUL
printf '%s\\0' "$@" > "$RECORDED_ARGUMENTS"
"""


@pytest.fixture
def datapath(tmp_path):
    """A ${DATAPATH} with the folders the script checks for."""
    datapath = tmp_path.resolve() / "data"
    (datapath / "datasets" / "pokemon" / "lmdb" / "train").mkdir(parents=True)
    return datapath


def script_train_argv(datapath, tmp_path, *extra, script=SCRIPT):
    """The `cn-clip-pokemon train` arguments that `bash run_scripts/SCRIPT DATAPATH EXTRA...` passes."""
    stand_in = tmp_path / "stand-in"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "cn-clip-pokemon").write_text(RECORDER)
    (stand_in / "cn-clip-pokemon").chmod(0o755)
    recorded = tmp_path / "arguments"
    env = dict(os.environ, PATH=f"{stand_in}{os.pathsep}{os.environ['PATH']}", RECORDED_ARGUMENTS=str(recorded))
    done = subprocess.run(
        ["bash", str(REPO / "run_scripts" / script), str(datapath), *extra], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    command, *argv = recorded.read_text().split("\0")[:-1]
    assert command == "train", f"{script} does not run `cn-clip-pokemon train`"
    return argv


def demo_train_argv(datapath):
    """The `cn-clip-pokemon train` arguments of `cn-clip-pokemon demo --config vit-b-16 --workdir
    DATAPATH --pretrained DATAPATH/pretrained_weights/clip_cn_vit-b-16.pt` (its work folder is laid
    out as a ${DATAPATH}; the trained dataset is datasets/pokemon, see demo.py's docstring)."""
    from cn_clip_pokemon.cli import build_parser

    weights = datapath / "pretrained_weights" / "clip_cn_vit-b-16.pt"
    args = build_parser(only="demo").parse_args(
        ["demo", "--config", "vit-b-16", "--workdir", str(datapath), "--pretrained", str(weights)]
    )
    recipe = demo_recipes.CONFIGS[args.config]
    work = args.workdir.resolve()
    argv = demo_recipes.train_argv(recipe, args, work / "datasets" / "pokemon", work / "experiments", demo_recipes.recipe_epochs(recipe, args))
    command, *argv = [str(word) for word in argv]
    assert command == "train"
    return argv


def effective_recipe(argv):
    """What upstream trains with, given `cn-clip-pokemon train ARGV`: upstream's parsed arguments,
    defaults included, with the global batch instead of the per-process one."""
    options, upstream_argv = launcher_parser().parse_known_args(argv)
    patching.install()
    from cn_clip.training.params import parse_args

    if options.pretrained is not None:
        upstream_argv += pretrained_argv(options.pretrained, parse_args(upstream_argv))
    recipe = {key: value for key, value in vars(parse_args(upstream_argv)).items() if key not in NOT_COMPARED}
    processes = options.nproc_per_node * options.nnodes
    recipe["global_batch_size"] = recipe.pop("batch_size") * processes
    return recipe


def _differences(recipe, reference):
    return {key: (recipe.get(key), reference.get(key)) for key in sorted(set(recipe) | set(reference)) if recipe.get(key) != reference.get(key)}


# --------------------------------------------------------------------------- the READMEs


def code_blocks(readme):
    """Every fenced block of a README, in order: (language, text)."""
    text = (REPO / readme).read_text(encoding="utf-8")
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def readme_training_lines(readme):
    """The lines of README's bash blocks that train on the Pokemon dataset: `cn-clip-pokemon train`,
    torchrun of it, the Pokemon run scripts by bash or by `cn-clip-pokemon run-script`."""
    found = []
    for language, block in code_blocks(readme):
        if language != "bash":
            continue
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if re.search(r"(cn-clip-pokemon|cn_clip_pokemon) train\b|torchrun|run_scripts/pokemon_|run-script pokemon_", line):
                found.append(line)
    return found


def readme_train_argv(line, datapath, tmp_path):
    """The `cn-clip-pokemon train` arguments a README line runs (torchrun's process counts as the
    launcher's flags); None for a line that is not a training command."""
    words = shlex.split(line.replace("${DATAPATH}", str(datapath)).replace("$DATAPATH", str(datapath)))
    if words[:2] == ["bash", f"run_scripts/{SCRIPT}"]:
        return script_train_argv(Path(words[2]), tmp_path, *words[3:])
    if words[:2] == ["cn-clip-pokemon", "run-script"] and words[2].removesuffix(".sh") == SCRIPT.removesuffix(".sh"):
        return script_train_argv(Path(words[3]), tmp_path, *words[4:])
    if words[:2] == ["cn-clip-pokemon", "train"]:
        return words[2:]
    if words[0] == "torchrun":
        # torchrun [its flags] -m cn_clip_pokemon train ARGS: its process count as the launcher's flags
        start = words.index("cn_clip_pokemon") + 2
        torchrun = " ".join(words[1:start])
        nproc = re.search(r"--nproc[-_]per[-_]node[= ](\d+)", torchrun)
        nnodes = re.search(r"--nnodes[= ](\d+)", torchrun)
        return ["--nproc-per-node", nproc.group(1) if nproc else "1", "--nnodes", nnodes.group(1) if nnodes else "1", *words[start:]]
    return None


def readme_vit_b16_commands():
    """(README, line) of every line that trains ViT-B-16 (named, or upstream's default when no
    --vision-model is given), the tiny script and other models' examples left out."""
    return [
        (readme, line)
        for readme in READMES
        for line in readme_training_lines(readme)
        if "pokemon_finetune_tiny_cpu" not in line and re.search(r"--vision-model[= ](?!ViT-B-16\b)", line) is None
    ]


# --------------------------------------------------------------------------- tests


def test_the_demo_trains_the_scripts_recipe(datapath, tmp_path):
    script = effective_recipe(script_train_argv(datapath, tmp_path))
    assert script["lr"] == 5e-5 and script["global_batch_size"] == 128 and script["name"] == NAME
    assert script["resume"] == str(datapath / "pretrained_weights" / "clip_cn_vit-b-16.pt")
    assert script["reset_optimizer"] and script["reset_data_offset"]
    assert _differences(effective_recipe(demo_train_argv(datapath)), script) == {}


def test_the_comparison_sees_upstreams_defaults(datapath, tmp_path):
    """Leaving out --lr is not the same recipe: upstream's default (5e-4 for ViT-B-16) comes in."""
    argv = script_train_argv(datapath, tmp_path)
    at = argv.index("--lr")
    without_lr = argv[:at] + argv[at + 2:]
    assert _differences(effective_recipe(without_lr), effective_recipe(argv)) == {"lr": (5e-4, 5e-5)}
    # eight processes of 16 are the recipe's 128 pairs per loss; eight of 128 are not
    same = effective_recipe(argv + ["--nproc-per-node", "8", "--batch-size", "16"])
    assert _differences(same, effective_recipe(argv)) == {}
    assert _differences(effective_recipe(argv + ["--nproc-per-node", "8"]), effective_recipe(argv)) == {"global_batch_size": (1024, 128)}


def test_every_readme_shows_a_vit_b16_training_command():
    for readme in READMES:
        lines = [line for r, line in readme_vit_b16_commands() if r == readme]
        assert any(SCRIPT in line or "run-script" in line for line in lines), f"{readme} does not show {SCRIPT}"
        assert any(re.search(r"cn-clip-pokemon train|torchrun", line) for line in lines), (
            f"{readme} shows no hand-written ViT-B-16 `cn-clip-pokemon train` command"
        )


@pytest.mark.parametrize("readme, line", readme_vit_b16_commands())
def test_readme_training_command_is_the_scripts_recipe(readme, line, datapath, tmp_path):
    argv = readme_train_argv(line, datapath, tmp_path)
    assert argv is not None, f"{readme}: not a training command: {line}"
    script = effective_recipe(script_train_argv(datapath, tmp_path))
    differences = _differences(effective_recipe(argv), script)
    # where training starts from (the released .pt, or a Hub folder) is not a hyper-parameter
    if "resume" in differences and all(differences["resume"]):
        differences.pop("resume")
    assert differences == {}, f"{readme}: {line}\ndiffers from run_scripts/{SCRIPT} in (README, script): {differences}"


@pytest.mark.parametrize("readme", READMES)
def test_readme_experiment_folders_are_ones_a_recipe_writes(readme):
    """Every ${DATAPATH}/experiments/NAME a README names is written by a run script or the demo."""
    written = {config["name"] for config in demo_recipes.CONFIGS.values()}
    for script in (REPO / "run_scripts").glob("pokemon_*.sh"):
        written |= set(re.findall(r"(?:--name|name=)\s*(\S+)", script.read_text(encoding="utf-8"))) - {'"${name}"'}
    text = "".join(block for _, block in code_blocks(readme))
    named = set(re.findall(r"\$\{?DATAPATH\}?/experiments/([\w.-]+)", text))
    assert named, f"{readme} names no experiment folder"
    assert named <= written, f"{readme} names experiment folders no recipe writes: {sorted(named - written)} (recipes write {sorted(written)})"


@pytest.mark.parametrize("readme", READMES)
def test_readme_exports_datapath_before_its_first_command_uses_it(readme):
    for _, block in code_blocks(readme):
        for line in block.splitlines():
            if "DATAPATH" in line:
                assert line.startswith("export DATAPATH="), f"{readme}: `{line}` uses ${{DATAPATH}} before `export DATAPATH=...`"
                return
    pytest.fail(f"{readme} never uses ${{DATAPATH}}")
