"""Model-config names -> JSON files: the one resolver for training, loading and upstream's own tools.

A name is a config registered by a plugin (``register_model_configs``: a path to upstream-format
JSON, or the dict itself), else upstream's ``cn_clip/clip/model_configs/NAME.json``. A ``/`` in a
name becomes ``-``, as in upstream (``ViT-L/14`` -> ``ViT-L-14.json``). Every caller gets a file path,
so upstream's code keeps its ``open(path)``: a registered dict is written once to a file named after
its content under the cache root (``files.cache_root()/model_configs/``), so a changed dict
gets a new file and an old one is never read by mistake.

Training (``cn_clip.training.data.model_config_file``, patch 0003), the checkpoint loader, upstream's
``load_from_name`` and its eval and deploy scripts (patches 0012-0014) all resolve through here.
"""
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError


class UnknownModelConfig(UserError, ValueError):
    """A model-config name that neither a plugin nor upstream has (a ValueError too, as upstream's callers expect)."""


def upstream_config_dir():
    """Upstream's ``cn_clip/clip/model_configs`` folder, found without importing cn_clip."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("cn_clip is not installed: pip install cn_clip==1.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "clip" / "model_configs"


def _normalise(name):
    if not isinstance(name, str) or not name:
        raise UnknownModelConfig(f"a model config name must be a non-empty string, not {name!r}")
    return name.replace("/", "-")


def _registered():
    from cn_clip_pokemon.plugins import get_model_configs

    return get_model_configs()


def _upstream_names():
    return {path.stem for path in upstream_config_dir().glob("*.json")}


def available_model_configs():
    """Every config name: upstream's first, then those plugins register (each part sorted)."""
    upstream = _upstream_names()
    return sorted(upstream) + sorted(set(_registered()) - upstream)


def model_config_path(name):
    """The JSON file of config ``name`` (see the module docstring); UnknownModelConfig listing the names otherwise."""
    name = _normalise(name)
    registered = _registered()
    if name in registered:
        return _registered_path(name, registered[name])
    path = upstream_config_dir() / f"{name}.json"
    if path.is_file():
        return path
    raise UnknownModelConfig(
        f"unknown model config {name!r}; available: {', '.join(available_model_configs())} "
        "(a plugin can add more through register_model_configs)"
    )


def _registered_path(name, config):
    if isinstance(config, dict):
        return _cached_config_file(name, config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"model config {name!r} is registered by a plugin as {path}, which is not a file")
        return path
    raise UserError(
        f"model config {name!r} is registered by a plugin as a {type(config).__name__}; "
        "register a path to a JSON file or the config dict itself"
    )


def _cached_config_file(name, config):
    """A registered dict as a JSON file named after its content, written once (atomically)."""
    from cn_clip_pokemon.files import atomic_write, cache_root

    try:
        text = json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise UserError(f"model config {name!r} registered by a plugin is not plain JSON data: {error}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    folders = (cache_root() / "model_configs", Path(tempfile.gettempdir()) / "cn-clip-pokemon-model-configs")
    for folder in folders:
        path = folder / f"{name}.{digest}.json"
        if path.is_file():
            return path
        try:
            with atomic_write(path, "w", encoding="utf-8") as file:
                file.write(text)
            return path
        except OSError:
            continue  # an unwritable cache root: the temporary folder next
    raise UserError(f"cannot write model config {name!r} to {folders[0]} or {folders[1]}")
