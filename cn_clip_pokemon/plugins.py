"""The plugin manager: loads the ``cn_clip.training`` entry-point group once.

Our own Pokemon dataset, launchers and tiny model configs are declared in setup.py under the same
entry-point group a third-party plugin uses. ``DEFAULT_PLUGINS`` is the fallback for a source tree
that was not pip-installed, so the package still works from a plain checkout.

``CN_CLIP_POKEMON_PLUGINS`` limits what loads: a comma-separated list of entry-point names
(``pokemon,launchers``), or an empty string for none but the defaults.
"""
import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

import pluggy

from cn_clip_pokemon import hookspecs
from cn_clip_pokemon.errors import UserError

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
# plugin name -> why it was skipped (failed to import, misspelt hook, failing hook)
_broken = {}

WAY_OUT = (
    "to run without it, list the plugins to load: CN_CLIP_POKEMON_PLUGINS=name1,name2 "
    "(an empty value loads only cn-clip-pokemon's own)"
)


class PluginError(UserError, ValueError):
    """A plugin registered something that cannot be used (a clash, a bad model config)."""


def _report_broken(name, reason):
    """A plugin that cannot load is skipped with one line; commands that do not need it go on."""
    _broken[name] = reason
    owner = _distributions.get(name)
    where = f" (from {owner})" if owner else ""
    print(f"cn-clip-pokemon: warning: plugin {name!r}{where} is skipped: {reason}; {WAY_OUT}", file=sys.stderr)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def load_plugins():
    """Load entry-point plugins and the defaults, once. A plugin that fails is reported and skipped."""
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
        dist = getattr(ep, "dist", None)
        if dist is not None:
            _distributions[ep.name] = f"{dist.metadata['Name']} {dist.version}"
        try:
            module = ep.load()
        except Exception as error:  # anything a broken import raises
            _report_broken(ep.name, f"importing {ep.value} failed ({_first_line(error)})")
            continue
        if pm.is_registered(module):
            other = pm.get_name(module)
            _report_broken(
                ep.name,
                f"it is the same module {getattr(module, '__name__', module)!r} as plugin {other!r} "
                f"({_distributions.get(other, 'another distribution')}): two distributions ship a top-level "
                "module of that name; give each plugin a package of its own",
            )
            continue
        pm.register(module, name=ep.name)
    for name, module_path in DEFAULT_PLUGINS.items():
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module_path), name=name)
            _distributions.setdefault(name, "cn-clip-pokemon (source tree)")
    _drop_invalid_plugins()
    return pm


def _drop_invalid_plugins():
    """pluggy's check_pending, one plugin at a time: a misspelt hook skips that plugin only."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as error:
            name = pm.get_name(error.plugin) or repr(error.plugin)
            pm.unregister(error.plugin)
            _report_broken(name, f"{error} (a misspelt hook name? the hooks are {', '.join(HOOK_NAMES)})")


HOOK_NAMES = ("register_datasets", "register_launchers", "register_model_configs")


def upstream_model_config_names():
    """Names of upstream's own model configs (cn_clip/clip/model_configs/*.json), found without
    importing cn_clip."""
    spec = importlib.util.find_spec("cn_clip")
    names = set()
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "clip" / "model_configs"
        names |= {path.stem for path in folder.glob("*.json")}
    return names


class Registry(dict):
    """A name -> object mapping filled by ``register(name, obj)`` callbacks from the hooks; it knows
    which plugin registered each name, and refuses a name taken twice, naming both."""

    def __init__(self, kind, reserved=None):
        super().__init__()
        self.kind = kind
        self.owners = {}
        self.reserved = reserved or {}  # name -> who already has it (upstream)

    def registrar(self, plugin_name):
        def register(name, obj):
            self.register(name, obj, plugin_name)

        return register

    def register(self, name, obj, plugin_name="in-process"):
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin_name!r}: a {self.kind} name must be a non-empty string, got {name!r}")
        owner = f"plugin {plugin_name!r} ({_distributions.get(plugin_name, 'registered in-process')})"
        if name in self.reserved:
            raise PluginError(
                f"{self.kind} {name!r} of {owner} is already {self.reserved[name]}: "
                f"rename the plugin's {self.kind}"
            )
        if name in self:
            first = self.owners[name]
            raise PluginError(
                f"{self.kind} {name!r} is registered twice, by {first} and by {owner}; rename one of "
                f"the plugins' {self.kind}s, or load one of them only ({WAY_OUT})"
            )
        self[name] = obj
        self.owners[name] = owner


def _collect(hook_name, kind, reserved=None, check=None):
    load_plugins()
    registry = Registry(kind, reserved)
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration order
        if impl.plugin_name in _broken:
            continue
        register = registry.registrar(impl.plugin_name)
        if check is not None:
            register = _checked(register, check, impl.plugin_name)
        try:
            impl.function(register=register)
        except UserError:
            raise
        except Exception as error:
            _report_broken(impl.plugin_name, f"its {hook_name} hook failed ({_first_line(error)})")
            pm.unregister(name=impl.plugin_name)
            return _collect(hook_name, kind, reserved, check)
    return registry


def _checked(register, check, plugin_name):
    def checked_register(name, obj):
        check(name, obj, plugin_name)
        register(name, obj)

    return checked_register


def get_datasets():
    """Dataset name -> dataset plugin object."""
    return _collect("register_datasets", "dataset", check=_check_dataset)


def get_launchers():
    """Launcher name -> launcher object."""
    return _collect("register_launchers", "launcher", check=_check_launcher)


def get_model_configs():
    """Model config name -> its config: a path to upstream-format JSON, or the dict itself."""
    reserved = {name: "upstream's own model config" for name in upstream_model_config_names()}
    return _collect("register_model_configs", "model config", reserved=reserved, check=_check_model_config)


def _check_dataset(name, dataset, plugin_name):
    if not callable(getattr(dataset, "get_dataset", None)):
        raise PluginError(
            f"dataset {name!r} of plugin {plugin_name!r} has no get_dataset(args, is_train, max_txt_length, "
            "epoch_id) method (see cn_clip_pokemon.hookspecs.DatasetPlugin)"
        )


def _check_launcher(name, launcher, plugin_name):
    if not callable(getattr(launcher, "launch", None)):
        raise PluginError(
            f"launcher {name!r} of plugin {plugin_name!r} has no launch(options, argv) method "
            "(see cn_clip_pokemon.hookspecs.Launcher)"
        )


def _check_model_config(name, config, plugin_name):
    """A path to a JSON file or a dict, in upstream's format for a vision or a text tower."""
    import json

    where = f"model config {name!r} of plugin {plugin_name!r}"
    if isinstance(config, (str, os.PathLike)):
        try:
            with open(config, encoding="utf-8") as f:
                content = json.load(f)
        except (OSError, ValueError) as error:
            raise PluginError(f"{where}: {config} is not a readable JSON file ({_first_line(error)})") from None
    elif isinstance(config, dict):
        content = config
    else:
        raise PluginError(f"{where} is a {type(config).__name__}; give a path to a JSON file or a dict")
    if not isinstance(content, dict) or hookspecs.config_kind(content) is None:
        raise PluginError(
            f"{where} is neither a vision config ({', '.join(hookspecs.VISION_CONFIG_KEYS)}) nor a text "
            f"config ({', '.join(hookspecs.TEXT_CONFIG_KEYS[:3])}, ...), the keys of upstream's model_configs/*.json"
        )


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
            try:
                impl(register=lambda item_name, _obj, _r=recorded: _r.append(item_name))
            except Exception as error:
                recorded.append(f"(failed: {_first_line(error)})")
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
    for name, reason in sorted(_broken.items()):
        if pm.get_plugin(name) is None:
            described.append({"name": name, "distribution": _distributions.get(name, "unknown"), "skipped": reason})
    return described
