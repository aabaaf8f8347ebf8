"""Plugin hook specifications for the ``cn_clip.training`` entry-point group."""
import pluggy

hookspec = pluggy.HookspecMarker("cn_clip.training")
hookimpl = pluggy.HookimplMarker("cn_clip.training")


@hookspec
def register_datasets(register):
    """Register dataset kinds: ``register(name, dataset_plugin)``."""


@hookspec
def register_launchers(register):
    """Register training launchers: ``register(name, launcher)``."""


@hookspec
def register_model_configs(register):
    """Register model configs: ``register(name, path_to_json)`` (vision or text tower)."""
