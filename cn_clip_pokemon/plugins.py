"""The plugin manager: loads the ``cn_clip.training`` entry-point group once and decides, once, what
each plugin adds.

Our own Pokemon dataset, launchers and tiny model configs (``DEFAULT_PLUGINS``) are registered
directly, first, so their names win every clash and a plain checkout works without pip; setup.py
declares the same modules under the same entry-point group a third-party plugin uses, and those entry
points are recognised and not loaded twice.

``CN_CLIP_POKEMON_PLUGINS`` limits what loads: a comma-separated list of entry-point names
(``shapes,cats``), or an empty string for none but the defaults.

The host wins. Before a command parses its arguments (:func:`decide`), every hook of every plugin is
called once and its registrations are checked:

- a plugin that fails to import, misspells a hook, raises in a hook or registers something invalid
  (an empty name, a name twice, a dataset without ``get_dataset``, a model config upstream cannot
  read) is skipped whole: none of its registrations count, in any command;
- a registration whose name is already taken (by upstream's own model configs, by cn-clip-pokemon's
  built-in datasets, launchers and model configs, by a reserved word such as ``--launcher auto``, or
  by a plugin of another distribution loaded earlier) is skipped alone; the rest of that plugin loads.

Each skip is one warning line on stderr naming both sides and the way out, and ``cn-clip-pokemon
plugins`` lists it and exits 1. A third-party dataset or launcher that raises when training calls it
costs one line naming the plugin and its distribution (:class:`PluginError`), never a traceback.

The `cn-clip-pokemon plugins` command (:func:`plugins_command`, at the end) prints what was decided.
"""
import importlib
import os
import sys
from importlib import metadata

import pluggy

from cn_clip_pokemon import hookspecs
from cn_clip_pokemon.errors import EXIT_ERROR, UserError
from cn_clip_pokemon.model_config_names import normalise_config_name, upstream_model_config_names

ENTRY_POINT_GROUP = "cn_clip.training"
OWN_DISTRIBUTION = "cn-clip-pokemon"

DEFAULT_PLUGINS = {
    "pokemon": "cn_clip_pokemon.default_plugins.pokemon_dataset",
    "launchers": "cn_clip_pokemon.default_plugins.launchers",
    "tiny_models": "cn_clip_pokemon.default_plugins.model_configs",
}

# hook name -> what it registers
HOOK_KINDS = {
    "register_datasets": "dataset",
    "register_launchers": "launcher",
    "register_model_configs": "model config",
}
HOOK_NAMES = tuple(HOOK_KINDS)

# names no plugin may take: they mean something to the commands themselves
RESERVED_NAMES = {
    "dataset": {"none": "cn-clip-pokemon's `train --dataset none` (upstream's own sampler)"},
    "launcher": {"auto": "cn-clip-pokemon's `train --launcher auto` (torchrun for several processes, else local)"},
    "model config": {},
}

pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
pm.add_hookspecs(hookspecs)

_loaded = False
# plugin name -> distribution name ("name version"), for `cn-clip-pokemon plugins`
_distributions = {}
# entry points that never became plugins: {"name", "distribution", "skipped"} (failed to import, same
# module or same entry-point name as another plugin)
_unregistered = []
_misspelt = {}  # plugin name -> why pluggy refused it (a hook name no spec has); unregistered
_decision = None  # (the registered plugins it was decided for, Decision)
_warned = set()



def _way_out(plugin_name):
    """How to run without ``plugin_name``: the CN_CLIP_POKEMON_PLUGINS setting that leaves it out."""
    return (
        f"to run without it, list the plugins to load: {_load_only(without=plugin_name)} "
        "(an empty value loads only cn-clip-pokemon's own)"
    )


class PluginError(UserError, ValueError):
    """A plugin failed where a command needs it (its dataset or launcher raised): one line, exit 1."""


def _warn(message):
    """One line on stderr, once per process; torchrun's workers other than rank 0 stay quiet (the
    launching command said it already)."""
    if message in _warned:
        return
    _warned.add(message)
    if os.environ.get("RANK", "0") == "0":
        print(f"cn-clip-pokemon: warning: {message}", file=sys.stderr)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def distribution_of(plugin_name):
    return _distributions.get(plugin_name, "registered in-process")


def _owner(plugin_name):
    return f"plugin {plugin_name!r} ({distribution_of(plugin_name)})"


def _own_distribution():
    try:
        return f"{OWN_DISTRIBUTION} {metadata.version(OWN_DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return f"{OWN_DISTRIBUTION} (source tree)"


def _skip_entry_point(name, distribution, reason):
    _unregistered.append({"name": name, "distribution": distribution, "skipped": reason})


def load_plugins():
    """Register our own plugins, then the entry points' (sorted by name), once. An entry point that
    cannot be imported, or that repeats a module or a name already registered, is skipped with one line."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    own = _own_distribution()
    for name, module_path in DEFAULT_PLUGINS.items():  # ours first: built-in names win
        pm.register(importlib.import_module(module_path), name=name)
        _distributions[name] = own
    wanted = os.environ.get("CN_CLIP_POKEMON_PLUGINS")
    wanted = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value)):
        if DEFAULT_PLUGINS.get(ep.name) == ep.value:
            continue  # one of ours, registered above
        if wanted is not None and ep.name not in wanted:
            continue
        dist = getattr(ep, "dist", None)
        distribution = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            _skip_entry_point(
                ep.name, distribution,
                f"the plugin name {ep.name!r} is taken by {_owner(ep.name)}; rename the entry point in the "
                "plugin's pyproject.toml",
            )
            continue
        try:
            module = ep.load()
        except (Exception, SystemExit) as error:  # anything a broken import raises, sys.exit() too
            _skip_entry_point(ep.name, distribution, f"importing {ep.value} failed ({_first_line(error)})")
            continue
        if pm.is_registered(module):
            other = pm.get_name(module)
            _skip_entry_point(
                ep.name, distribution,
                f"it is the same module {getattr(module, '__name__', module)!r} as {_owner(other)}: two "
                "distributions ship a top-level module of that name; give each plugin a package of its own",
            )
            continue
        _distributions[ep.name] = distribution
        pm.register(module, name=ep.name)
    for skipped in _unregistered:  # said once every plugin is known, so the way out lists them
        _warn(f"plugin {skipped['name']!r} (from {skipped['distribution']}) is skipped: {skipped['skipped']}; "
              f"{_way_out(skipped['name'])}")
    return pm


def is_builtin(plugin_name):
    """Whether ``plugin_name`` is one of cn-clip-pokemon's own plugins (their names win every clash):
    load_plugins registers them first, so an entry point can never take their names."""
    return plugin_name in DEFAULT_PLUGINS


def _upstream_distribution():
    try:
        return f"cn_clip {metadata.version('cn_clip')}"
    except metadata.PackageNotFoundError:
        return "cn_clip"


class Registry(dict):
    """Name -> registered object, for one kind (dataset, launcher, model config); ``plugin_of`` says
    which plugin registered each name."""

    def __init__(self):
        super().__init__()
        self.plugin_of = {}


class Decision:
    """What every plugin adds, decided once: registries per kind, and every skip."""

    def __init__(self):
        self.registries = {kind: Registry() for kind in HOOK_KINDS.values()}
        self.skipped_plugins = {}  # plugin name -> reason (the whole plugin)
        self.offered_by_skipped = {}  # plugin name -> what it offered before it was skipped
        self.skipped_registrations = {}  # plugin name -> [{"kind", "name", "skipped"}]
        self.registered = {}  # plugin name -> {hook name: [names kept]}

    @property
    def anything_skipped(self):
        return bool(self.skipped_plugins or self.skipped_registrations or _unregistered)


def _drop_invalid_plugins():
    """pluggy's check_pending, one plugin at a time: a misspelt hook skips that plugin only."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as error:
            name = pm.get_name(error.plugin) or repr(error.plugin)
            pm.unregister(error.plugin)
            _misspelt[name] = f"{error} (a misspelt hook name? the hooks are {', '.join(HOOK_NAMES)})"


def decide():
    """Call every plugin's hooks once and decide what each adds (see the module docstring); warn about
    every skip once. Decided again only when plugins are registered or unregistered in-process."""
    global _decision
    load_plugins()
    _drop_invalid_plugins()
    # the plugin objects themselves, kept referenced by the cached key: an unregistered plugin's id
    # may be reused by a new one, the object cannot
    key = (tuple(pm.list_name_plugin()), tuple(_misspelt))
    if _decision is not None and _same_plugins(_decision[0], key):
        return _decision[1]
    decision = Decision()
    decision.skipped_plugins.update(_misspelt)
    reserved = {kind: dict(names) for kind, names in RESERVED_NAMES.items()}
    reserved["model config"].update(
        (name, f"upstream's own model config ({_upstream_distribution()})") for name in upstream_model_config_names()
    )
    # cn-clip-pokemon's own first, so they win clashes; the others in the order they were registered
    for plugin_name, plugin in sorted(pm.list_name_plugin(), key=lambda item: not is_builtin(item[0])):
        if plugin is None:  # a blocked name
            continue
        offered, problem = _offered_by(plugin_name, plugin)
        if problem is not None:
            decision.skipped_plugins[plugin_name] = problem
            decision.offered_by_skipped[plugin_name] = offered
            continue
        kept = decision.registered.setdefault(plugin_name, {})
        for hook_name, kind, name, obj in offered:
            kept.setdefault(hook_name, [])
            registry = decision.registries[kind]
            kept_as = _registry_key(kind, name)
            clash = _clash(kind, name, kept_as, registry, reserved[kind], plugin_name)
            if clash is not None:
                decision.skipped_registrations.setdefault(plugin_name, []).append(
                    {"kind": kind, "name": name, "skipped": clash}
                )
                continue
            registry[kept_as] = obj
            registry.plugin_of[kept_as] = plugin_name
            kept[hook_name].append(name)
    for name, reason in decision.skipped_plugins.items():
        _warn(f"plugin {name!r} (from {distribution_of(name)}) is skipped, none of what it registers counts: {reason}; {_way_out(name)}")
    for name, skips in decision.skipped_registrations.items():
        for skip in skips:
            _warn(f"{skip['kind']} {skip['name']!r} of {_owner(name)} is skipped: {skip['skipped']}")
    _decision = (key, decision)
    return decision


def _same_plugins(a, b):
    """Whether two decide() keys name the same plugin objects (by identity) and the same refusals."""
    (plugins_a, misspelt_a), (plugins_b, misspelt_b) = a, b
    return misspelt_a == misspelt_b and len(plugins_a) == len(plugins_b) and all(
        name_a == name_b and plugin_a is plugin_b
        for (name_a, plugin_a), (name_b, plugin_b) in zip(plugins_a, plugins_b)
    )


def _offered_by(plugin_name, plugin):
    """Everything ``plugin`` registers, as (hook, kind, name, object), and why it cannot load (or None)."""
    offered = []
    for hook_name, kind in HOOK_KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(name, obj, _hook=hook_name, _kind=kind):
                offered.append((_hook, _kind, name, obj))

            try:
                impl.function(register=register)
            except (Exception, SystemExit) as error:
                return offered, f"its {hook_name} hook raised {_first_line(error)}"
    seen = set()
    for hook_name, kind, name, obj in offered:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            return offered, f"a {kind} name must be a non-empty string without surrounding spaces, got {name!r}"
        if (kind, name) in seen:
            return offered, f"its {hook_name} hook registers the {kind} {name!r} twice"
        seen.add((kind, name))
        problem = CHECKS[kind](name, obj)
        if problem is not None:
            return offered, problem
    return offered, None


def _registry_key(kind, name):
    """The name a registration is kept (and looked up) under: a model config by the resolver's own
    spelling (``ViT/X`` and ``ViT-X`` are one config), the rest as given."""
    if kind == "model config":
        return normalise_config_name(name)
    return name


def _taken_by_reserved(kind, key, reserved):
    """What reserved name ``key`` is: model configs match exactly, as the resolver looks them up; a
    dataset or launcher matches a reserved word (``none``, ``auto``) in any case."""
    if kind == "model config":
        return reserved.get(key)
    return next((reserved[word] for word in reserved if word.lower() == key.lower()), None)


def _clash(kind, name, key, registry, reserved, plugin_name):
    """Why ``name`` (kept under ``key``) cannot be ``plugin_name``'s (it is taken), or None."""
    taken = _taken_by_reserved(kind, key, reserved)
    if taken is None and key in registry and is_builtin(registry.plugin_of[key]):
        first = registry.plugin_of[key]
        taken = f"cn-clip-pokemon's own {kind} (plugin {first!r}, {distribution_of(first)})"
    if taken is not None:
        return (
            f"{name!r} is {taken}, which wins; the rest of the plugin loads. Ask its authors to rename "
            f"their {kind}, or leave the plugin out: {_load_only(without=plugin_name)}"
        )
    if key not in registry:
        return None
    first = registry.plugin_of[key]
    return (
        f"{_owner(first)} registered it first and keeps it; to use this one instead, leave {first!r} out: "
        f"{_load_only(without=first)}"
    )


def _load_only(without):
    """The CN_CLIP_POKEMON_PLUGINS setting that loads every installed plugin but ``without``."""
    others = sorted(n for n in _distributions if n not in DEFAULT_PLUGINS and n != without)
    return f"CN_CLIP_POKEMON_PLUGINS={','.join(others)}"


def _check_dataset(name, dataset):
    if not callable(getattr(dataset, "get_dataset", None)):
        return (
            f"its dataset {name!r} has no get_dataset(args, is_train, max_txt_length, epoch_id) method "
            "(see cn_clip_pokemon.hookspecs.DatasetPlugin)"
        )
    return None


def _check_launcher(name, launcher):
    if not callable(getattr(launcher, "launch", None)):
        return f"its launcher {name!r} has no launch(options, argv) method (see cn_clip_pokemon.hookspecs.Launcher)"
    return None


def _check_model_config(name, config):
    """A path to a JSON file or a dict, in upstream's format for a vision or a text tower."""
    import json

    where = f"its model config {name!r}"
    if isinstance(config, (str, os.PathLike)):
        try:
            with open(config, encoding="utf-8") as f:
                content = json.load(f)
        except (OSError, ValueError) as error:
            return f"{where}: {config} is not a readable JSON file ({_first_line(error)})"
    elif isinstance(config, dict):
        content = config
    else:
        return f"{where} is a {type(config).__name__}; give a path to a JSON file or a dict"
    if not isinstance(content, dict) or hookspecs.config_kind(content) is None:
        return (
            f"{where} is neither a vision config ({', '.join(hookspecs.VISION_CONFIG_KEYS)}) nor a text "
            f"config ({', '.join(hookspecs.TEXT_CONFIG_KEYS[:3])}, ...), the keys of upstream's model_configs/*.json"
        )
    return None


CHECKS = {"dataset": _check_dataset, "launcher": _check_launcher, "model config": _check_model_config}


def get_datasets():
    """Dataset name -> dataset plugin object."""
    return decide().registries["dataset"]


def get_launchers():
    """Launcher name -> launcher object."""
    return decide().registries["launcher"]


def get_model_configs():
    """Model config name -> its config: a path to upstream-format JSON, or the dict itself."""
    return decide().registries["model config"]


def why_not_registered(kind, name):
    """Why ``name`` is not a registered ``kind``, when a plugin offered it and was skipped ("" if none did)."""
    decision = decide()
    for plugin_name, skips in decision.skipped_registrations.items():
        for skip in skips:
            if skip["kind"] == kind and skip["name"] == name:
                return f"{_owner(plugin_name)} offered it, skipped: {skip['skipped']}"
    for plugin_name, reason in decision.skipped_plugins.items():
        offered = decision.offered_by_skipped.get(plugin_name, [])
        if any(k == kind and n == name for _, k, n, _obj in offered):
            return f"{_owner(plugin_name)} offers it, but is skipped: {reason}"
    return ""


TRACEBACK_VARIABLE = "CN_CLIP_POKEMON_TRACEBACK"


def _blame(kind, name, registry, action, error):
    """The one line for a third-party plugin that failed; with CN_CLIP_POKEMON_TRACEBACK=1 (for the
    plugin's authors) the exception itself goes on, with its traceback."""
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
        raise error
    plugin_name = registry.plugin_of[name]
    message = str(error).strip().splitlines()[0] if isinstance(error, UserError) and str(error).strip() else _first_line(error)
    return PluginError(
        f"{kind} {name!r} of {_owner(plugin_name)} failed in {action}: {message}; update the plugin "
        f"({TRACEBACK_VARIABLE}=1 shows where it failed), or {_way_out(plugin_name)}"
    )


def get_plugin_dataset(name, args, is_train, max_txt_length=64, epoch_id=0):
    """``datasets[name].get_dataset(...)`` for upstream's training (patches/0005), checked: a third-party
    plugin that raises, or returns no usable DataInfo, is one PluginError line naming it and its
    distribution. cn-clip-pokemon's own datasets are called as they are."""
    datasets = get_datasets()
    builtin = is_builtin(datasets.plugin_of[name])
    action = f"get_dataset(is_train={is_train}, epoch_id={epoch_id})"
    try:
        data = datasets[name].get_dataset(args, is_train, max_txt_length=max_txt_length, epoch_id=epoch_id)
    except Exception as error:
        if builtin:
            raise
        raise _blame("dataset", name, datasets, action, error) from None
    if builtin:
        return data
    loader = getattr(data, "dataloader", None)
    missing = [attribute for attribute in ("num_batches", "num_samples") if not isinstance(getattr(loader, attribute, None), int)]
    if missing:
        raise _blame(
            "dataset", name, datasets, action,
            UserError(
                f"it returned {type(data).__name__}, not upstream's DataInfo with dataloader.{' and dataloader.'.join(missing)} "
                "(cn_clip_pokemon.unique_text_batches builds one)"
            ),
        )
    return data


def launch(name, options, argv):
    """``launchers[name].launch(options, argv)``: a third-party launcher that raises is one PluginError line."""
    launchers = get_launchers()
    try:
        return launchers[name].launch(options, argv)
    except Exception as error:
        if is_builtin(launchers.plugin_of[name]):
            raise
        raise _blame("launcher", name, launchers, "launch()", error) from None


def describe_plugins():
    """What each plugin is, where it comes from, what it registers and what was skipped (for `plugins`)."""
    decision = decide()
    described = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None or name in decision.skipped_plugins:
            continue
        entry = {
            "name": name,
            "module": getattr(plugin, "__name__", repr(plugin)),
            "distribution": distribution_of(name),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
            "registers": decision.registered.get(name, {}),
        }
        if name in decision.skipped_registrations:
            entry["skipped_registrations"] = decision.skipped_registrations[name]
        described.append(entry)
    skipped = [
        {"name": name, "distribution": distribution_of(name), "skipped": reason}
        for name, reason in decision.skipped_plugins.items()
    ]
    described += sorted(skipped + _unregistered, key=lambda entry: entry["name"])
    return described


def anything_skipped():
    """True when a plugin, or one of its registrations, was skipped (`plugins` then exits 1)."""
    return decide().anything_skipped


# --------------------------------------------------------------------------- `cn-clip-pokemon plugins`


def plugins_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON (the default is a table)")


def plugins_command(args):
    """Exit 1 when a plugin, or one of its registrations, was skipped (each is listed)."""
    import json

    described = describe_plugins()
    if args.json:
        print(json.dumps(described, ensure_ascii=False, indent=2))
    else:
        for plugin in described:
            if "skipped" in plugin:
                print(f"{plugin['name']}  (from {plugin['distribution']}): SKIPPED, {plugin['skipped']}")
                continue
            print(f"{plugin['name']}  ({plugin['module']}, from {plugin['distribution']})")
            for hook, names in plugin["registers"].items():
                print(f"  {hook}: {', '.join(names) if names else '(nothing)'}")
            for skip in plugin.get("skipped_registrations", []):
                print(f"  SKIPPED {skip['kind']} {skip['name']}: {skip['skipped']}")
    return EXIT_ERROR if anything_skipped() else 0
