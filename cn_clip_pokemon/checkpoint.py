"""One loader for every Chinese-CLIP checkpoint shape, and the writer of ours.

Shapes accepted by :func:`load_model`:

- ours: upstream's training format plus ``"model_config"`` (the names and every ``CLIP(**kwargs)``
  argument), so the file alone rebuilds its model, and ``"captions"`` (the candidate captions of
  the dataset it was trained on: :attr:`LoadedCheckpoint.captions`);
- upstream fine-tune checkpoints ``{"epoch", "step", "name", "state_dict", "optimizer"}`` whose keys
  carry DistributedDataParallel's ``module.`` prefix;
- FlashAttention layouts (``attn.Wqkv.*`` keys, see ``cn_clip.clip.model.convert_state_dict``);
- raw state dicts (with or without ``module.``);
- the official pretrained releases (``clip_cn_vit-b-16.pt``...: ``{"state_dict"}``, fp16, ``module.``),
  by path or by upstream's name (``ViT-B-16``), found like upstream's ``load_from_name`` does.
- transformers ``ChineseCLIPModel`` folders (the Hub's layout, or ``export-hf``'s), converted by
  :mod:`cn_clip_pokemon.hf_format`.

Without a ``model_config`` the architecture is read from tensor shapes and named after the registered
config (ours or upstream's) it matches (:func:`cn_clip_pokemon.model_config_resolver.infer_model_info`).
Where a file comes from and how it is read is :mod:`cn_clip_pokemon.checkpoint_sources`' concern: with
``torch.load(weights_only=True)``, so a pickle that would run code is refused, never executed. Here the
file's config and tensors are checked before a model is allocated, and loading is strict: a key that
does not fit is reported, grouped, with its likely cause, instead of being left at random like
``strict=False`` does.
"""
import json
import math
import re
from collections import OrderedDict
from pathlib import Path

from cn_clip_pokemon.checkpoint_files import first_line
from cn_clip_pokemon.checkpoint_sources import read_checkpoint, resolve_checkpoint_path
from cn_clip_pokemon.dataset_format import CAPTIONS_KEY, FRAMING_KEY, FRAMINGS, check_framing
from cn_clip_pokemon.devices import pick_device
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write
from cn_clip_pokemon.model_config_resolver import (
    TEXT_SHAPE_KEYS,
    VISION_SHAPE_KEYS,
    count_indexed,
    infer_model_info,
    model_info_for,
)


def _is_tensor(value):
    import torch

    return isinstance(value, torch.Tensor)


def split_checkpoint(obj, path):
    """``(state_dict, model_config or None)`` from whatever ``torch.load`` gave."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state dict")
    model_config = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else None
    if isinstance(obj.get("state_dict"), dict):
        state_dict = obj["state_dict"]
    elif isinstance(obj.get("model"), dict):  # some exporters nest weights under "model"
        state_dict = obj["model"]
    elif obj and all(_is_tensor(value) for value in obj.values()):
        state_dict = obj
    else:
        raise UserError(
            f"{path} has no weights: expected a 'state_dict' entry or a raw state dict, found keys "
            f"{', '.join(sorted(map(str, obj))[:8])}"
        )
    if not state_dict:
        raise UserError(f"{path} has an empty state dict")
    return state_dict, model_config


def normalize_state_dict(state_dict):
    """Plain CLIP keys: DDP's ``module.`` stripped, FlashAttention layout converted back, no pooler."""
    from cn_clip.clip.model import convert_state_dict

    state_dict = OrderedDict(
        (key[len("module."):] if key.startswith("module.") else key, value) for key, value in state_dict.items()
    )
    if any(".attn.Wqkv." in key or ".attention.self.Wqkv." in key for key in state_dict):
        # upstream's converter reads one out_proj key with a hard-coded "module." prefix, so it only
        # works on DDP-prefixed dicts: give it one and strip the prefix again
        prefixed = OrderedDict(("module." + key, value) for key, value in state_dict.items())
        converted = convert_state_dict(prefixed)
        state_dict = OrderedDict((key[len("module."):], value) for key, value in converted.items())
    # the model has no BERT pooler (upstream drops those keys on every load)
    return OrderedDict((key, value) for key, value in state_dict.items() if not key.startswith("bert.pooler."))


# --------------------------------------------------------------------------- strict loading


def _group_keys(keys):
    """``visual.transformer.resblocks.{6..11}.* (72 keys)``-style labels for a list of keys."""
    groups = OrderedDict()
    for key in keys:
        parts = key.split(".")
        index_at = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if index_at is None:
            prefix, number = ".".join(parts[:2]), None
        else:
            prefix, number = ".".join(parts[:index_at]), int(parts[index_at])
        entry = groups.setdefault(prefix, {"keys": [], "numbers": set()})
        entry["keys"].append(key)
        if number is not None:
            entry["numbers"].add(number)
    labels = []
    for prefix, entry in groups.items():
        numbers = sorted(entry["numbers"])
        count = len(entry["keys"])
        if count == 1:
            label = entry["keys"][0]
        elif numbers:
            span = str(numbers[0]) if len(numbers) == 1 else f"{{{numbers[0]}..{numbers[-1]}}}"
            label = f"{prefix}.{span}.*"
        else:
            label = f"{prefix}.*"
        labels.append(f"{label} ({count} key{'s' if count != 1 else ''})")
    return labels


def _likely_cause(missing, unexpected, mismatched, source):
    towers = {key.split(".")[0] for key in missing + unexpected + [m[0] for m in mismatched]}
    if missing and unexpected and not (set(missing) & set(unexpected)):
        resnet_vs_vit = any("visual.layer" in k or "attnpool" in k for k in missing + unexpected) and any(
            "visual.transformer" in k for k in missing + unexpected
        )
        if resnet_vs_vit:
            return "a ResNet vision tower on one side and a ViT on the other: the vision model name is wrong"
    if missing and not unexpected and not mismatched and towers == {"bert"} and all(k.startswith("bert.") for k in missing):
        return "the file holds no text tower (a vision-only file?): use a complete Chinese-CLIP checkpoint"
    if mismatched and not missing and not unexpected:
        return f"same layers, different sizes: {source} does not match this file (width, resolution or vocabulary)"
    if mismatched:
        return f"a different architecture (sizes and layer counts differ): {source} does not match this file"
    if (missing or unexpected) and all(re.search(r"\.\d+\.", k) for k in missing + unexpected):
        return f"a different number of layers: {source} does not match this file"
    return f"{source} does not match this file, or the file is not a Chinese-CLIP checkpoint"


def _fit_report(expected_shapes, state_dict, path, source):
    """The grouped report of how ``state_dict`` does not fit ``{key: shape}``, or None when it fits."""
    missing = [key for key in expected_shapes if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected_shapes]
    mismatched = [
        (key, tuple(state_dict[key].shape), tuple(expected_shapes[key]))
        for key in expected_shapes
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected_shapes[key])
    ]
    if not (missing or unexpected or mismatched):
        return None
    lines = [f"{path} does not fit the model built from {source}:"]
    if missing:
        lines.append(f"  missing from the file, {len(missing)} keys: " + "; ".join(_group_keys(missing)))
    if unexpected:
        lines.append(f"  unexpected in the file, {len(unexpected)} keys: " + "; ".join(_group_keys(unexpected)))
    if mismatched:
        shown = "; ".join(f"{key} {tuple(got)} vs model {tuple(want)}" for key, got, want in mismatched[:4])
        more = f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else ""
        lines.append(f"  different shapes, {len(mismatched)} tensors: {shown}{more}")
    lines.append(f"  likely cause: {_likely_cause(missing, unexpected, mismatched, source)}")
    return "\n".join(lines)


def load_state_dict_strictly(model, state_dict, path, source):
    """``model.load_state_dict(strict=True)`` with a readable, grouped report when it cannot fit."""
    report = _fit_report({key: value.shape for key, value in model.state_dict().items()}, state_dict, path, source)
    if report:
        raise UserError(report)
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------- checks before allocating
# A checkpoint's model_config decides how big a model is built, so a 2 KB file could ask for tens of
# GiB (vision_width 65536) before a single key is compared. Its config is checked first: arguments
# present and of the right kind, layer counts against the file's keys, then every tensor shape against
# a model built on the "meta" device, which has shapes and no storage.


def _clip_arguments():
    """CLIP(**kwargs)'s argument names and those without a default (tokenizer is never ours to set)."""
    import inspect

    from cn_clip.clip.model import CLIP

    parameters = [p for name, p in inspect.signature(CLIP).parameters.items() if name != "tokenizer"]
    return {p.name for p in parameters}, [p.name for p in parameters if p.default is inspect.Parameter.empty]


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_model_info(model_info, path):
    """A one-line UserError unless ``model_info`` can be CLIP(**kwargs): every argument there, sizes
    positive whole numbers, nothing unknown."""
    if not isinstance(model_info, dict):
        raise UserError(f"{path}: its model_config's model_info is a {type(model_info).__name__}, not CLIP's arguments; the file is damaged")
    known, required = _clip_arguments()
    absent = [name for name in required if name not in model_info]
    if absent:
        raise UserError(
            f"{path}: its model_config lacks {', '.join(absent)}, so the model cannot be built from it; "
            "pass --vision-model and --text-model to name the architecture, or re-save the checkpoint"
        )
    unknown = sorted(str(name) for name in model_info if name not in known)
    if unknown:
        raise UserError(f"{path}: its model_config has arguments CLIP does not take ({', '.join(unknown)}); the file is damaged or from another model")
    layers = model_info["vision_layers"]
    layers_ok = _is_count(layers) or (isinstance(layers, (list, tuple)) and len(layers) == 4 and all(map(_is_count, layers)))
    sizes = [key for key in VISION_SHAPE_KEYS + TEXT_SHAPE_KEYS + ("text_num_attention_heads",) if key != "vision_layers"]
    if model_info.get("vision_patch_size") is None and isinstance(layers, (list, tuple)):
        sizes.remove("vision_patch_size")  # ResNets have no patches
    wrong = [f"{key}={model_info[key]!r}" for key in sizes if not _is_count(model_info[key])]
    if not layers_ok:
        wrong.insert(0, f"vision_layers={layers!r}")
    if wrong:
        raise UserError(f"{path}: its model_config has {', '.join(wrong)}, not positive whole numbers; the file is damaged")


def _layer_counts(model_info, state_dict):
    """``[(config key, key prefix, config count, count in the file)]`` for each stack of layers."""
    layers = model_info["vision_layers"]
    if isinstance(layers, (list, tuple)):
        vision = [(f"vision_layers[{i}]", f"visual.layer{i + 1}.", layers[i]) for i in range(4)]
    else:
        vision = [("vision_layers", "visual.transformer.resblocks.", layers)]
    stacks = vision + [("text_num_hidden_layers", "bert.encoder.layer.", model_info["text_num_hidden_layers"])]
    return [(name, prefix, int(wanted), count_indexed(state_dict, prefix)) for name, prefix, wanted in stacks]


def check_config_against_weights(model_info, state_dict, path):
    """A one-line UserError naming the first key where a file's own model_config and its tensors disagree.

    Builds the model on the meta device (no memory) to know each tensor's shape; layer counts are
    compared first, from the keys alone, so a config asking for a million layers builds nothing.
    """
    advice = "the file was edited or damaged: re-save it, or pass --vision-model and --text-model to build the architecture its weights have"
    for name, prefix, wanted, found in _layer_counts(model_info, state_dict):
        if wanted != found:
            key = f"{prefix}{min(wanted, found)}.*"
            what = "missing from the file" if wanted > found else "in the file but not in the config"
            raise UserError(f"{path}: its model_config says {name}={wanted} but the file holds {found} such layers ({key} {what}); {advice}")
    expected = shapes_on_meta(model_info, path)
    inferred = (infer_model_info(state_dict) or {}).get("model_info", {})
    for key, want in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != want:
            differing = [
                f"{name}={model_info[name]!r} (the weights say {inferred[name]!r})"
                for name in VISION_SHAPE_KEYS + TEXT_SHAPE_KEYS
                if name in inferred and model_info.get(name) != inferred[name]
            ]
            says = f"; the config says {', '.join(differing)}" if differing else ""
            raise UserError(
                f"{path}: its model_config does not match its weights: {key} is {tuple(state_dict[key].shape)} in the file "
                f"but {want} for the config{says}; refusing to build a model from it: {advice}"
            )
    return expected


def shapes_on_meta(model_info, path):
    """``{key: shape}`` of the model ``CLIP(**model_info)`` would be, built without allocating memory."""
    import torch
    from cn_clip.clip.model import CLIP

    try:
        with torch.device("meta"):
            model = CLIP(**model_info)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError, AssertionError, AttributeError, KeyError) as error:
        raise UserError(f"model_config of {path} is not a valid CLIP(**kwargs): {first_line(error)}") from None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# --------------------------------------------------------------------------- tensors worth loading
# A file can hold tensors of the right shapes that still make no model: on the meta device (no data),
# sparse or quantized (load_state_dict then raises deep inside torch), of a dtype the model cannot take
# (complex parts or integers dropped silently), views that repeat one number (a stride-0 tensor of a
# billion elements over a 4-byte storage), NaN or infinite weights, matrices of zeros, or a logit
# scale no training leaves. Kinds are checked before any shape is read, values once the shapes fit
# the model (so each costs at most what the model holds), all before the model is allocated.

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# upstream's training keeps logit_scale in [0, ln 100] (train.py clamps it after every step)
LOGIT_SCALE_RANGE = (0.0, 4.6052)
LOGIT_SCALE_TOLERANCE = 1e-3
_RESAVE = "the file is damaged or not a trained model's weights: use another checkpoint, or re-save it as dense float tensors"


def check_tensor_kinds(state_dict, path):
    """A one-line UserError naming the first entry that is not a plain dense CPU tensor of floats
    (BatchNorm's ``num_batches_tracked`` counters may be integers) whose storage holds every element."""
    import torch

    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a tensor; {_RESAVE}")
        if value.device.type == "meta":
            raise UserError(f"{path}: {key} is a tensor on the meta device, which holds no values (saved from a model that was never filled); {_RESAVE}")
        if value.layout != torch.strided:
            raise UserError(f"{path}: {key} is a {str(value.layout).replace('torch.', '')} tensor, not a dense one (tensor.to_dense() makes one); {_RESAVE}")
        if value.is_quantized:
            raise UserError(f"{path}: {key} is quantized ({value.dtype}; tensor.dequantize() gives floats); {_RESAVE}")
        dtype = str(value.dtype).replace("torch.", "")
        counter = key.endswith("num_batches_tracked") and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
        if dtype not in FLOAT_DTYPES and not counter:
            raise UserError(f"{path}: {key} is of dtype {dtype}, not floating point, so its values would be cut or dropped; {_RESAVE}")
        needed = value.numel() * value.element_size()
        if needed and value.untyped_storage().nbytes() < needed:
            raise UserError(
                f"{path}: {key} is a view of {value.numel():,} elements over a storage of {value.untyped_storage().nbytes():,} bytes "
                f"(one value repeated); {_RESAVE}"
            )


def check_tensor_values(state_dict, path):
    """A one-line UserError unless every float tensor is finite, no weight matrix is all zeros, and
    ``logit_scale`` lies where upstream's training keeps it. Call once the shapes fit the model."""
    import torch

    for key, value in state_dict.items():
        if not value.is_floating_point() or not value.numel():
            continue
        # one pass: min and max are NaN when any value is, infinite when any is, both 0 when all are
        # (ViT-B-16's 188M fp16 values: ~0.1 s, where isfinite().all() takes seconds)
        low, high = (float(bound) for bound in torch.aminmax(value))
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = value.numel() - int(torch.isfinite(value).sum())
            raise UserError(
                f"{path}: {key} holds {bad:,} NaN or infinite values (of {value.numel():,}), so every answer would be NaN: "
                "the run that wrote it diverged or the file is damaged; use an earlier checkpoint"
            )
        if value.dim() >= 2 and low == high == 0:
            raise UserError(
                f"{path}: {key} is all zeros, so every picture or text would get the same (or an undefined) embedding; {_RESAVE}"
            )
    scale = state_dict.get("logit_scale")
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.is_floating_point():
        value = float(scale.reshape(()))
        low, high = LOGIT_SCALE_RANGE
        if not low - LOGIT_SCALE_TOLERANCE <= value <= high + LOGIT_SCALE_TOLERANCE:
            raise UserError(
                f"{path}: logit_scale is {value:.6g} (a softmax temperature of 1/{math.exp(min(value, 700)):.4g}), outside "
                f"[{low}, {high}] where upstream's training keeps it (ln 100 at most); the file was edited or damaged: use another checkpoint"
            )


# --------------------------------------------------------------------------- public API


class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns: the model, its preprocessing, where it came from.

    ``preprocess``: an :class:`~cn_clip_pokemon.images.PicturePreprocess` (a path or a PIL image of
    any mode -> the model's input tensor, transparency on white, padded square). ``captions``: the
    candidate captions of the dataset the checkpoint was trained on (the names ``classify`` ranks by
    default), a list of str, or None for a checkpoint that records none (upstream's, older ones).
    ``framing``: how its training pictures were framed (``preprocess.framing``, "as-is" unless the
    checkpoint records "subject").
    """

    def __init__(self, model, preprocess, model_config, path, captions=None):
        self.model = model
        self.preprocess = preprocess
        self.model_config = model_config
        self.path = path
        self.captions = captions

    @property
    def framing(self):
        return self.preprocess.framing

    @property
    def input_resolution(self):
        return int(self.model_config["input_resolution"])

    @property
    def context_length(self):
        # the position table bounds the text length; upstream's models all use 52
        return min(52, int(self.model_config["model_info"]["text_max_position_embeddings"]))


def load_checkpoint(path_or_name, device=None, vision_model=None, text_model=None, input_resolution=None, download_root=None,
                    views="one"):
    """Like :func:`load_model`, but returns a :class:`LoadedCheckpoint` (config and path too)."""
    from cn_clip.clip.model import CLIP, resize_pos_embed
    from cn_clip.clip.utils import _MODEL_INFO, _MODELS

    from cn_clip_pokemon.images import PicturePreprocess
    from cn_clip_pokemon.views import check_views

    check_views(views)  # a bad choice is said before any weights are read
    device = pick_device(device)  # a device it cannot use is said before any weights are read
    path = resolve_checkpoint_path(path_or_name, download_root=download_root)
    saved = read_checkpoint(path)
    state_dict, saved_config = split_checkpoint(saved, path)
    captions = checkpoint_captions(saved, path)
    framing = checkpoint_framing(saved, path)
    state_dict = normalize_state_dict(state_dict)
    check_tensor_kinds(state_dict, path)

    if str(path_or_name) in _MODELS and not (vision_model or text_model):
        vision_model, text_model = _MODEL_INFO[str(path_or_name)]["struct"].split("@")
    own_config = False  # whether the architecture comes from the (untrusted) file's model_config

    if vision_model or text_model:
        if not (vision_model and text_model):
            # one name forced: the other comes from the file
            base = saved_config or infer_model_info(state_dict) or {}
            vision_model = vision_model or base.get("vision_model")
            text_model = text_model or base.get("text_model")
            if not (vision_model and text_model):
                raise UserError(
                    f"cannot tell the architecture of {path}: give both the vision and the text model names"
                )
        model_info = model_info_for(vision_model, text_model)
        source = f"the names {vision_model}@{text_model}"
        model_config = {"vision_model": vision_model, "text_model": text_model, "model_info": model_info}
    elif saved_config is not None:
        if "model_info" not in saved_config:
            raise UserError(
                f"{path}: its model_config has no model_info (CLIP's arguments); pass --vision-model and "
                "--text-model to name the architecture, or re-save the checkpoint"
            )
        if not isinstance(saved_config["model_info"], dict):
            check_model_info(saved_config["model_info"], path)  # says what it is instead
        model_info = dict(saved_config["model_info"])
        model_config = dict(saved_config)
        source = "the checkpoint's own model_config"
        own_config = True
    else:
        model_config = infer_model_info(state_dict)
        if model_config is None:
            keys = ", ".join(list(state_dict)[:5])
            raise UserError(
                f"{path} does not look like a Chinese-CLIP checkpoint (first keys: {keys}); "
                "pass --vision-model and --text-model if it is one"
            )
        model_info = model_config["model_info"]
        names = f"{model_config['vision_model'] or 'unregistered vision'}@{model_config['text_model'] or 'unregistered text'}"
        source = f"shapes read from the file ({names})"

    if isinstance(model_info.get("vision_layers"), str):
        # upstream's RN50 config writes "[3,4,6,3]"; read it as JSON, never eval()
        try:
            model_info["vision_layers"] = json.loads(model_info["vision_layers"])
        except ValueError:
            pass  # check_model_info names it
    model_info.pop("use_flash_attention", None)  # always rebuilt with plain attention (any device)
    check_model_info(model_info, path)
    checkpoint_resolution = model_info["image_resolution"]

    # Every shape is checked on a memory-less "meta" model at the file's own resolution before the
    # real model is allocated: a config that disagrees with the file costs nothing.
    if own_config:
        expected_shapes = check_config_against_weights(model_info, state_dict, path)
    else:
        expected_shapes = shapes_on_meta(model_info, path)
    report = _fit_report(expected_shapes, state_dict, path, source)
    if report:
        raise UserError(report)
    check_tensor_values(state_dict, path)

    if input_resolution:
        model_info["image_resolution"] = int(input_resolution)
    model_config["model_info"] = model_info
    model_config["input_resolution"] = int(model_info["image_resolution"])

    try:
        model = CLIP(**model_info)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError, AssertionError) as error:
        raise UserError(f"model_config of {path} is not a valid CLIP(**kwargs): {first_line(error)}") from None
    if input_resolution and int(input_resolution) != checkpoint_resolution:
        # a ViT checkpoint trained at one resolution still runs at another: interpolate positions
        resize_pos_embed(state_dict, model)
    load_state_dict_strictly(model, state_dict, path, source)
    model = model.float().to(device).eval()
    preprocess = PicturePreprocess(model_config["input_resolution"], framing, views)
    return LoadedCheckpoint(model, preprocess, model_config, Path(path), captions)


def checkpoint_captions(checkpoint, path):
    """The ``"captions"`` a checkpoint records (training writes its dataset's candidate captions there,
    next to ``model_config``): a list of str, or None when it has none. One that is not a non-empty
    list of texts is ignored with one warning line, as the file is not ours to trust."""
    import sys

    captions = checkpoint.get(CAPTIONS_KEY) if isinstance(checkpoint, dict) else None
    if captions is None:
        return None
    if isinstance(captions, (list, tuple)) and captions and all(isinstance(caption, str) and caption for caption in captions):
        return list(dict.fromkeys(captions))
    print(f"cn-clip-pokemon: warning: {path}: its {CAPTIONS_KEY!r} entry is not a list of texts; ignored", file=sys.stderr)
    return None


def checkpoint_framing(checkpoint, path):
    """The ``"framing"`` a checkpoint records (training writes its dataset's there, next to
    ``captions``): one of FRAMINGS; "as-is" when it records none (upstream's, older ones) or one this
    version does not know, the latter with one warning line."""
    import sys

    framing = checkpoint.get(FRAMING_KEY) if isinstance(checkpoint, dict) else None
    if framing is None or framing in FRAMINGS:
        return framing or "as-is"
    print(f"cn-clip-pokemon: warning: {path}: its {FRAMING_KEY!r} entry {str(framing)[:40]!r} is not one of "
          f"{', '.join(FRAMINGS)}; pictures are taken as they are", file=sys.stderr)
    return "as-is"


def load_model(path_or_name, device=None, vision_model=None, text_model=None, input_resolution=None, download_root=None,
               views="one"):
    """Load any Chinese-CLIP checkpoint or pretrained name; returns ``(model, preprocess)``.

    ``model`` is a ``cn_clip.clip.model.CLIP`` in fp32 and eval mode on ``device`` (CUDA when there is
    one). ``preprocess`` is a :class:`cn_clip_pokemon.images.PicturePreprocess`: it takes a path or a
    PIL image of any mode and opens it exactly as the dataset builder and ``classify`` do
    (transparent pixels composited on white, padded to a square on white, then upstream's
    ``image_transform`` at the model's resolution), so the same picture gets the same answer
    through every door. ``vision_model`` and ``text_model`` force config names;
    ``input_resolution`` runs a ViT at another resolution; ``views="turns"`` makes the doors that take the
    preprocess from here (classify, search, evaluate, the page) also show the model each picture turned and
    smaller (``views.VIEWS``; ``preprocess(picture)`` stays the picture as it is, ``preprocess.views_of``
    gives every view). :func:`load_checkpoint` gives the same
    plus ``captions``, the names the checkpoint was trained to tell apart.
    """
    loaded = load_checkpoint(
        path_or_name,
        device=device,
        vision_model=vision_model,
        text_model=text_model,
        input_resolution=input_resolution,
        download_root=download_root,
        views=views,
    )
    return loaded.model, loaded.preprocess


def model_config_for(vision_model, text_model, input_resolution=None):
    """Our checkpoint's ``model_config`` entry for two config names."""
    info = model_info_for(vision_model, text_model, input_resolution)
    return {
        "vision_model": vision_model,
        "text_model": text_model,
        "input_resolution": int(info["image_resolution"]),
        "model_info": info,
    }


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def save_model(model, path, model_config, epoch=0, step=0, name=None, optimizer_state=None, captions=None,
               framing=None):
    """Write ``model`` in our checkpoint format (upstream's keys plus ``model_config``, and
    ``captions`` when given: the names it tells apart; ``framing`` when given: how the pictures it
    was trained on were framed), atomically.

    Keys get DDP's ``module.`` prefix like upstream's training writes them, so upstream's own
    ``load_from_name(path, vision_model_name=..., text_model_name=..., input_resolution=...)`` and
    its ``--resume`` read the file too.
    """
    model = getattr(model, "module", model)
    checkpoint = {
        "epoch": int(epoch),
        "step": int(step),
        "name": name or Path(path).stem,
        "state_dict": OrderedDict(("module." + key, value.detach().cpu()) for key, value in model.state_dict().items()),
        "model_config": json.loads(json.dumps(model_config)),
    }
    if optimizer_state is not None:
        checkpoint["optimizer"] = optimizer_state
    if captions is not None:
        checkpoint[CAPTIONS_KEY] = [str(caption) for caption in captions]
    if framing is not None:
        checkpoint[FRAMING_KEY] = check_framing(framing)
    atomic_torch_save(checkpoint, path)
    return Path(path)
