"""The plugin contract of the ``cn_clip.training`` entry-point group: three hooks, and what they register.

A plugin is a module (or object) with ``@hookimpl`` functions; each hook receives a ``register``
callback and calls it once per thing it offers. Every hook of every plugin is called once, before a
command parses its arguments (cn_clip_pokemon.plugins.decide). The host wins: a name already taken
(by upstream, by cn-clip-pokemon itself, or by a plugin loaded earlier) is skipped with a warning
naming both owners, and a plugin whose hook raises or registers something invalid is skipped whole.
The Protocol classes below say what each registered object must provide.
"""
from os import PathLike
from typing import Any, Dict, Optional, Protocol, Sequence, Union, runtime_checkable

import pluggy

hookspec = pluggy.HookspecMarker("cn_clip.training")
hookimpl = pluggy.HookimplMarker("cn_clip.training")


@hookspec
def register_datasets(register):
    """Register dataset plugins: ``register(name, dataset)``, ``dataset`` a :class:`DatasetPlugin`."""


@hookspec
def register_launchers(register):
    """Register training launchers: ``register(name, launcher)``, ``launcher`` a :class:`Launcher`."""


@hookspec
def register_model_configs(register):
    """Register model configs: ``register(name, config)``, ``config`` a :data:`ModelConfig`."""


# --------------------------------------------------------------------------- what hooks register


@runtime_checkable
class DatasetPlugin(Protocol):
    """What ``train --dataset NAME`` calls to get upstream's training (and validation) data.

    ``get_dataset(args, is_train, max_txt_length, epoch_id)`` is called by upstream's ``get_data``
    once per epoch (``is_train=True``) and, when ``--val-data`` is given, for validation
    (``is_train=False``). ``args`` is upstream's parsed argparse namespace: ``args.train_data`` /
    ``args.val_data`` (None when not given), ``args.batch_size`` / ``args.valid_batch_size`` (per
    process), ``args.num_workers``, ``args.seed``, ``args.vision_model`` (resolution: upstream's
    ``cn_clip.training.data.fetch_resolution(args.vision_model)``), ``args.device``, and
    ``torch.distributed`` is initialised (``get_world_size()`` processes, this one ``get_rank()``).

    It returns upstream's ``cn_clip.training.data.DataInfo(dataloader, sampler, dataset, epoch_id)``:

    - ``dataloader`` yields ``(images, texts, eos_indices)`` batches: ``images`` float
      (B, 3, R, R) normalised like upstream's ``image_transform(R)``, ``texts`` long (B,
      max_txt_length) from ``cn_clip.clip.tokenize(..., context_length=max_txt_length)``,
      ``eos_indices`` long (B,), the position of ``[SEP]`` in each text row;
    - ``dataloader.num_batches``: batches this process takes per epoch (the same on every process);
      ``dataloader.num_samples``: pairs per epoch over all processes
      (``num_batches * batch_size * world_size``);
    - ``sampler`` has ``set_epoch(epoch)`` (or is None); with a ``start_batch`` attribute it lets a
      run resumed mid-epoch skip the batches already trained;
    - every batch of a process has ``batch_size`` items (upstream gathers features across processes).

    ``cn_clip_pokemon.unique_text_batches(dataset, groups, args, is_train, epoch_id)`` builds all of
    this from a torch Dataset of ``(image, text, eos_index)`` items and one group key per item (the
    caption): the built-in dataset's batching, where no batch holds a group twice. An exception
    raised here costs the user one line naming the plugin (``CN_CLIP_POKEMON_TRACEBACK=1`` shows it).

    ``needs_train_data`` (default True): False when the plugin makes its own data, so
    ``train --dataset NAME`` runs without ``--train-data``. ``description``: one line for
    ``cn-clip-pokemon plugins``.
    """

    def get_dataset(self, args: Any, is_train: bool, max_txt_length: int = 64, epoch_id: int = 0) -> Any:
        ...


@runtime_checkable
class Launcher(Protocol):
    """How ``cn-clip-pokemon train --launcher NAME`` starts training.

    ``launch(options, argv) -> int``: ``options`` are the launcher flags (``nproc_per_node``,
    ``nnodes``, ``node_rank``, ``master_addr``, ``master_port``, ``device``), ``argv`` upstream's
    training flags, already checked; returns the exit code. ``description``: one line.
    """

    def launch(self, options: Any, argv: Sequence[str]) -> int:
        ...


# A model config is upstream's JSON format, as a path to the file or as the dict itself. A vision
# config has "embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size"
# (ViT) or "vision_layers" as a list (ResNet); a text config has "vocab_size" (21128: cn_clip's
# tokenizer) and the "text_*" keys of RoBERTa (hidden size, layers, heads, intermediate size, ...).
# Upstream's hyper-parameter defaults (lr, Adam's betas and eps) exist only for its own vision
# models; for a plugin's, training takes ViT-B-16's and says so, unless --lr etc. are given.
ModelConfig = Union[str, PathLike, Dict[str, Any]]

VISION_CONFIG_KEYS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size")
TEXT_CONFIG_KEYS = (
    "vocab_size",
    "text_attention_probs_dropout_prob",
    "text_hidden_act",
    "text_hidden_dropout_prob",
    "text_hidden_size",
    "text_initializer_range",
    "text_intermediate_size",
    "text_max_position_embeddings",
    "text_num_attention_heads",
    "text_num_hidden_layers",
    "text_type_vocab_size",
)


def config_kind(config: Dict[str, Any]) -> Optional[str]:
    """"vision", "text", or None when ``config`` has the keys of neither."""
    if all(key in config for key in VISION_CONFIG_KEYS):
        return "vision"
    if all(key in config for key in TEXT_CONFIG_KEYS):
        return "text"
    return None
