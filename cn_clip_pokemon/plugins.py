"""The plugin manager: loads the ``cn_clip.training`` entry-point group once.

Our own Pokemon dataset, launchers and tiny model configs are declared in setup.py under the same
entry-point group a third-party plugin uses. ``DEFAULT_PLUGINS`` is the fallback for a source tree
that was not pip-installed, so the package still works from a plain checkout.

``CN_CLIP_POKEMON_PLUGINS`` limits what loads: a comma-separated list of entry-point names
(``pokemon,launchers``), or an empty string for none but the defaults.
"""
import importlib
import os
from importlib import metadata

import pluggy

from cn_clip_pokemon import hookspecs

ENTRY_POINT_GROUP = "cn_clip.training"

DEFAULT_PLUGINS = {
    "pokemon": "cn_clip_pokemon.default_plugins.pokemon_dataset",
    "launchers": "cn_clip_pokemon.default_plugins.launchers",
    "tiny_models": "cn_clip_pokemon.default_plugins.model_configs",
}

pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
pm.add_hookspecs(hookspecs)

_loaded = False
# plugin name -> distribution name ("name version"), for `cn-clip-pokemon plugins`
_distributions = {}


def load_plugins():
    """Load entry-point plugins and the defaults, once."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    wanted = os.environ.get("CN_CLIP_POKEMON_PLUGINS")
    wanted = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and ep.name not in wanted and ep.name not in DEFAULT_PLUGINS:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        module = ep.load()
        pm.register(module, name=ep.name)
        dist = getattr(ep, "dist", None)
        if dist is not None:
            _distributions[ep.name] = f"{dist.metadata['Name']} {dist.version}"
    for name, module_path in DEFAULT_PLUGINS.items():
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module_path), name=name)
            _distributions.setdefault(name, "cn-clip-pokemon (source tree)")
    pm.check_pending()
    return pm


class Registry(dict):
    """A name -> object mapping filled by ``register(name, obj)`` callbacks from the hooks."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name, obj):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice; rename one of the plugins' {self.kind}s"
            )
        self[name] = obj


def _collect(hook_name, kind):
    load_plugins()
    registry = Registry(kind)
    getattr(pm.hook, hook_name)(register=registry.register)
    return registry


def get_datasets():
    """Dataset name -> dataset plugin object."""
    return _collect("register_datasets", "dataset")


def get_launchers():
    """Launcher name -> launcher object."""
    return _collect("register_launchers", "launcher")


def get_model_configs():
    """Model config name -> path of its JSON file."""
    return _collect("register_model_configs", "model config")


def describe_plugins():
    """What each loaded plugin is, where it comes from and what it registers (for `plugins`)."""
    load_plugins()
    described = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        registers = {}
        for hook_name in hooks:
            recorded = []
            impl = getattr(plugin, hook_name)
            impl(register=lambda item_name, _obj, _r=recorded: _r.append(item_name))
            registers[hook_name] = recorded
        described.append(
            {
                "name": name,
                "module": getattr(plugin, "__name__", repr(plugin)),
                "distribution": _distributions.get(name, "registered in-process"),
                "hooks": hooks,
                "registers": registers,
            }
        )
    return described
