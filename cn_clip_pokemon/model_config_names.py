"""Model-config names: how a name is spelled where it is looked up, and the names upstream ships.

Below both the plugin manager (which keeps registered configs under these spellings, so ``ViT/X``
and ``ViT-X`` clash) and :mod:`cn_clip_pokemon.model_config_resolver` (which finds their files).
"""
import importlib.util
from functools import lru_cache
from pathlib import Path

from cn_clip_pokemon.errors import UserError


class UnknownModelConfig(UserError, ValueError):
    """A model-config name that neither a plugin nor upstream has (a ValueError too, as upstream's callers expect)."""


def normalise_config_name(name):
    """``name`` as it is looked up: a ``/`` becomes ``-``, as in upstream (``ViT-L/14`` -> ``ViT-L-14.json``)."""
    if not isinstance(name, str) or not name:
        raise UnknownModelConfig(f"a model config name must be a non-empty string, not {name!r}")
    return name.replace("/", "-")


def upstream_config_dir():
    """Upstream's ``cn_clip/clip/model_configs`` folder, found without importing cn_clip."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("cn_clip is not installed: pip install cn_clip==1.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "clip" / "model_configs"


@lru_cache(maxsize=None)
def upstream_model_config_names():
    """Names of upstream's own model configs (``model_configs/*.json``), read from its folder once
    per process (an installed package does not change while it runs); none without cn_clip."""
    try:
        folder = upstream_config_dir()
    except UserError:
        return frozenset()
    return frozenset(path.stem for path in folder.glob("*.json"))
