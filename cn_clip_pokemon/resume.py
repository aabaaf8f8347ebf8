"""Where a training run starts: any checkpoint shape, the exact batch after a step checkpoint, and
how many checkpoints stay on disk. Called by upstream's main through patches/0013-0016.

Upstream's resume is ``torch.load`` then ``checkpoint["state_dict"]`` / ``["epoch"]`` / ``["step"]``:
it refuses checkpoints that unpatched upstream training wrote (numpy learning rates under
``weights_only=True``), raises KeyError on a state-dict-only file, and after a mid-epoch step
checkpoint jumps to the next epoch, skipping the rest of the interrupted one. Here:

- the file is read by the same loader as ``load_model`` (every shape it accepts, a pickle that would
  run code refused, never executed);
- the position in the data comes from the global step: ``divmod(step, steps_per_epoch)`` gives the
  epoch and the batch within it, so a step checkpoint continues at its next batch, in the same order;
- ``--keep-checkpoints N`` keeps the newest N ``epochN.pt`` (and N step checkpoints) beside
  ``epoch_latest.pt``;
- a run killed while saving leaves a temporary file as large as a checkpoint (2.3 GB for ViT-B-16
  with its optimizer state): the next run removes those of the checkpoint names when it starts, and
  every save those of its own name (files.atomic_write).
"""
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from cn_clip_pokemon.errors import UserError


@dataclass
class TrainingCheckpoint:
    """What a run resumes from: weights with DDP's ``module.`` prefix, and what else the file had."""

    path: str
    state_dict: "OrderedDict"
    epoch: Optional[int]
    step: Optional[int]
    optimizer: Optional[dict]
    model_config: Optional[dict]


def _whole_number(value):
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_training_checkpoint(path, args, automatic):
    """The checkpoint at ``path`` for ``args``'s model; ``automatic`` when it is the run's own
    epoch_latest.pt, found by upstream's automatic resume rather than asked for."""
    from cn_clip_pokemon.checkpoint import normalize_state_dict, split_checkpoint
    from cn_clip_pokemon.checkpoint_sources import read_checkpoint

    loaded = read_checkpoint(path)  # one-line UserError for unreadable or code-running pickles
    state_dict, model_config = split_checkpoint(loaded, path)
    if automatic and model_config:
        saved = (model_config.get("vision_model"), model_config.get("text_model"))
        wanted = (args.vision_model, args.text_model)
        if None not in saved and saved != wanted:
            run_dir = os.path.dirname(os.path.dirname(path))
            raise UserError(
                f"{path} is this run's own checkpoint (--logs/--name) and holds {saved[0]} + {saved[1]}, "
                f"but this command asks for {wanted[0]} + {wanted[1]}; training would continue it. "
                f"Give another --name to start fresh, or move {run_dir} away"
            )
    state = normalize_state_dict(state_dict)  # plain keys, default attention layout, no BERT pooler
    container = loaded if isinstance(loaded, dict) and "state_dict" in loaded else {}
    optimizer = container.get("optimizer")
    return TrainingCheckpoint(
        path=str(path),
        state_dict=OrderedDict(("module." + key, value) for key, value in state.items()),
        epoch=_whole_number(container.get("epoch")),
        step=_whole_number(container.get("step")),
        optimizer=optimizer if isinstance(optimizer, dict) and optimizer.get("state") is not None else None,
        model_config=model_config,
    )


def load_weights(model, checkpoint, use_flash_attention):
    """Upstream's resume load (position embeddings resized, fast-attention layout), but strict with a
    readable report instead of ~40 lines of ``size mismatch``."""
    from cn_clip.clip.model import convert_state_dict, resize_pos_embed

    from cn_clip_pokemon.checkpoint import load_state_dict_strictly

    state = OrderedDict(checkpoint.state_dict)
    resize_pos_embed(state, model, prefix="module.")
    if use_flash_attention:
        state = convert_state_dict(state)
    plain = OrderedDict((key[len("module."):], value) for key, value in state.items())
    inner = getattr(model, "module", model)
    load_state_dict_strictly(inner, plain, checkpoint.path, "this run's --vision-model and --text-model")


def load_optimizer(optimizer, checkpoint):
    """True when the optimizer state was restored; a file without one starts the optimizer afresh."""
    if checkpoint.optimizer is None:
        logging.warning("%s holds no optimizer state: the optimizer starts afresh", checkpoint.path)
        return False
    try:
        optimizer.load_state_dict(checkpoint.optimizer)
    except (ValueError, KeyError, RuntimeError) as error:
        raise UserError(
            f"{checkpoint.path}: its optimizer state does not fit this model ({str(error).splitlines()[0]}); "
            "add --reset-optimizer to keep the weights and start the optimizer afresh"
        ) from None
    return True


def data_position(checkpoint, steps_per_epoch):
    """``(start_epoch, steps, start_batch)``: the epoch to run next (0-based), the global step count,
    and how many of that epoch's optimizer steps are already done.

    A step checkpoint is saved as ``epoch = E`` (1-based, the epoch under way) and ``step = S``
    (global); ``divmod(S, steps_per_epoch)`` says how far into epoch E it was. When the two disagree
    (the batch size or the dataset changed since), the epoch count wins, as upstream does.
    """
    if checkpoint.step is None:
        logging.warning(
            "%s records no epoch/step (a weights-only file): training starts at epoch 1. "
            "To start from released weights, use --pretrained FILE", checkpoint.path,
        )
        return 0, 0, 0
    steps = checkpoint.step
    if steps_per_epoch <= 0:
        return checkpoint.epoch or 0, steps, 0
    done_epochs, into_epoch = divmod(steps, steps_per_epoch)
    if checkpoint.epoch is None or done_epochs in (checkpoint.epoch - 1, checkpoint.epoch):
        return done_epochs, steps, into_epoch
    logging.warning(
        "%s was saved at step %d of epoch %d, which does not fit %d steps per epoch (batch size or data "
        "changed?): continuing at epoch %d", checkpoint.path, steps, checkpoint.epoch, steps_per_epoch,
        checkpoint.epoch + 1,
    )
    return checkpoint.epoch, steps, 0


# The names of the checkpoints training writes (epoch_latest.pt, epochN.pt, epoch_E_S.pt)
CHECKPOINT_NAME = re.compile(r"epoch_latest\.pt|epoch\d+\.pt|epoch_\d+_\d+\.pt")


def remove_stale_checkpoint_temporaries(checkpoint_dir):
    """Remove the temporary files that runs killed while saving a checkpoint left in ``checkpoint_dir``
    (``.epoch_latest.pt.XXXXXXXX.tmp``; never one a live save holds locked); returns their names."""
    from cn_clip_pokemon.files import remove_stale_temporaries

    removed = remove_stale_temporaries(checkpoint_dir, CHECKPOINT_NAME)
    if removed:
        logging.info("removed %s, left by a run killed while saving a checkpoint", ", ".join(sorted(removed)))
    return removed


_EPOCH_FILE = re.compile(r"^epoch(\d+)\.pt$")
_STEP_FILE = re.compile(r"^epoch_(\d+)_(\d+)\.pt$")


def prune_checkpoints(checkpoint_dir, keep):
    """Delete all but the newest ``keep`` epochN.pt, and all but the newest ``keep`` step checkpoints
    (epoch_E_S.pt); epoch_latest.pt always stays. ``keep`` None or < 1 keeps everything."""
    if keep is None or keep < 1:
        return []
    try:
        names = os.listdir(checkpoint_dir)
    except FileNotFoundError:
        return []
    epochs = sorted((int(m.group(1)), name) for name in names if (m := _EPOCH_FILE.match(name)))
    steps = sorted(((int(m.group(1)), int(m.group(2))), name) for name in names if (m := _STEP_FILE.match(name)))
    removed = []
    for ordered in (epochs, steps):
        for _, name in ordered[:-keep]:
            try:
                os.unlink(os.path.join(checkpoint_dir, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    if removed:
        logging.info("--keep-checkpoints %d: removed %s", keep, ", ".join(removed))
    return removed
