"""One loader for every Chinese-CLIP checkpoint shape, and the model-config names behind it.

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
  :mod:`cn_clip_pokemon.huggingface`.

Without a ``model_config`` the architecture is read from tensor shapes and named after the registered
config (ours or upstream's) it matches. Files are read with ``torch.load(weights_only=True)``, so a
pickle that would run code is refused, never executed. Loading is strict: a key that does not fit is
reported, grouped, with its likely cause, instead of being left at random like ``strict=False`` does.
"""
import hashlib
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path

from cn_clip_pokemon.dataset_format import CAPTIONS_KEY
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.hookspecs import VISION_CONFIG_KEYS
from cn_clip_pokemon.files import atomic_write, file_sha256

# The CLIP(**kwargs) arguments that tensor shapes decide; the rest (dropouts, activation, head width)
# come from the matching config, or defaults when none matches.
VISION_SHAPE_KEYS = VISION_CONFIG_KEYS  # every key of a vision config shows in the tensors
TEXT_SHAPE_KEYS = (
    "vocab_size",
    "text_hidden_size",
    "text_intermediate_size",
    "text_max_position_embeddings",
    "text_num_hidden_layers",
    "text_type_vocab_size",
)
TEXT_DEFAULTS = {
    "text_attention_probs_dropout_prob": 0.1,
    "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.1,
    "text_initializer_range": 0.02,
}
# Upstream's heads are always 64 wide (except ViT-H's vision_head_width 80); shapes cannot tell.
DEFAULT_HEAD_WIDTH = 64


# --------------------------------------------------------------------------- model-config names


def model_config_files():
    """Every known config name -> JSON path: upstream's own first, then those plugins register.

    Names resolve through :mod:`cn_clip_pokemon.model_config_resolver`, like training and upstream's tools.
    """
    from cn_clip_pokemon.model_config_resolver import available_model_configs, model_config_path

    return {name: model_config_path(name) for name in available_model_configs()}


def read_model_config(name):
    """The config dict of a vision or text config name (vision_layers parsed to int or list)."""
    from cn_clip_pokemon.model_config_resolver import model_config_path

    path = model_config_path(name)  # UnknownModelConfig (a UserError) lists the names available
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    layers = config.get("vision_layers")
    if isinstance(layers, str):
        # upstream writes RN50's "[3,4,6,3]" as a string and eval()s it; JSON reads it safely
        config["vision_layers"] = json.loads(layers)
    return config


def _is_vision_config(config):
    return "vision_layers" in config


def model_info_for(vision_model, text_model, input_resolution=None):
    """CLIP(**kwargs) for a vision and a text config name, like upstream's create_model merges them."""
    vision = read_model_config(vision_model)
    text = read_model_config(text_model)
    if not _is_vision_config(vision):
        raise UserError(f"{vision_model!r} is a text config; pass it as the text model")
    if _is_vision_config(text):
        raise UserError(f"{text_model!r} is a vision config; pass it as the vision model")
    info = dict(vision)
    info.update(text)
    if input_resolution:
        info["image_resolution"] = int(input_resolution)
    return info


def _matching_config_name(wanted, keys, vision):
    """The first config name whose shape-deciding values equal ``wanted`` (upstream's names first)."""
    from cn_clip_pokemon.model_config_resolver import available_model_configs

    for name in available_model_configs():
        try:
            config = read_model_config(name)
        except (OSError, ValueError, UserError):
            continue
        if _is_vision_config(config) != vision:
            continue
        if all(config.get(key) == wanted.get(key) for key in keys):
            return name, config
    return None, None


# --------------------------------------------------------------------------- reading files


def resolve_checkpoint_path(path_or_name, download_root=None):
    """A checkpoint file path for a path or an upstream pretrained name (``ViT-B-16``...)."""
    from cn_clip.clip.utils import _MODELS

    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.is_file():
        return candidate
    if candidate.is_dir():  # a transformers ChineseCLIP folder (the Hub's layout), or a one-line error
        from cn_clip_pokemon.huggingface import check_hf_folder

        return check_hf_folder(candidate)
    if str(path_or_name) in _MODELS:
        filename = _MODELS[str(path_or_name)][1]
        roots = [download_root] if download_root else []
        if os.environ.get("DATAPATH"):
            roots.append(os.path.join(os.environ["DATAPATH"], "pretrained_weights"))
        roots.append(os.path.expanduser("~/.cache/clip"))
        for root in roots:
            if os.path.isfile(os.path.join(root, filename)):
                return Path(root) / filename
        hint = f"put {filename} in one of those folders, or pass its path"
        looked = f"pretrained {path_or_name} not found (looked for {filename} in {', '.join(roots)})"
        if not _hub_reachable():
            raise UserError(f"{looked} and the Hugging Face hub is not reachable to download it; {hint}")
        try:
            from cn_clip.clip.utils import _download

            return Path(_download(str(path_or_name), roots[0]))
        except Exception as error:  # huggingface_hub missing, file gone, connection dropped...
            raise UserError(f"{looked} and the download failed ({type(error).__name__}: {_first_line(error)}); {hint}") from None
    if candidate.exists():
        raise UserError(f"{candidate} is not a file: pass a checkpoint file (.pt)")
    raise UserError(
        f"no checkpoint {str(path_or_name)!r}: not a file, nor a pretrained name "
        f"({', '.join(_MODELS)})"
    )


def _hub_reachable(timeout=3.0):
    """Whether a download from the Hugging Face hub can even start (offline mode, DNS, TCP)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def numpy_scalar_globals():
    """The numpy names a plain numpy scalar unpickles through, and nothing else.

    Upstream's training writes learning rates as ``numpy.float64`` into the optimizer state (its
    cosine schedule computes them with numpy), so ``weights_only=True`` alone refuses every checkpoint
    unpatched upstream training wrote. A scalar needs ``multiarray.scalar`` (which only builds a
    number from a dtype and raw bytes) and the dtype classes; none of them can run code.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    return [scalar, np.dtype] + sorted({type(np.dtype(kind)) for kind in kinds}, key=lambda t: t.__name__)


def read_checkpoint(path):
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure as a one-line UserError."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():  # a transformers folder: safetensors without pickle, .bin with weights_only
        from cn_clip_pokemon.huggingface import read_hf_folder

        return read_hf_folder(path)
    check_archive_sizes(path)
    try:
        # torch warns about what it meets in a file (sparse invariants, quantized or typed storages):
        # what matters is checked after loading (check_tensor_kinds), and said in one line
        with torch.serialization.safe_globals(numpy_scalar_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "weights_only" in message.lower() or "Unsupported global" in message:
            found = re.search(r"(?:unsupported|Unsupported global:) (GLOBAL [\w.]+)", message)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"refusing to load {path}: unpickling it would run code{what}, which a checkpoint "
                "never needs; it was not executed. Re-save the weights from a trusted copy "
                "(torch.save of plain tensors) or use another file"
            ) from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file): {_first_line(error)}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, AttributeError, TypeError, ImportError) as error:
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file): {_first_line(error)}"
        ) from None


# torch.save stores every record of its zip archive uncompressed, so reading a checkpoint costs about
# as much memory as the file has bytes. A record can claim any size, though, and deflate packs 2 GB of
# zeros into 2 MB: torch would allocate and inflate all of it before anything else could be checked.
# So the archive's own index is read first (a few bytes per record) and its declared sizes are held
# to the file's size: honestly compressed weights shrink by ~10%, never by half.
MAX_EXPANSION = 2  # declared bytes per byte on disk
EXPANSION_SLACK = 64 << 20  # small files: a few records of metadata may compress well
MAX_RECORDS = 100_000  # torch writes one record per storage: a few thousand for the largest model with its optimizer


def check_archive_sizes(path):
    """A one-line UserError when ``path``, a zip archive (torch's format since 1.6), declares more
    content than it can hold uncompressed (see MAX_EXPANSION) or absurdly many records; nothing is
    inflated to find out. Anything that is not a readable zip is left to ``torch.load`` to judge."""
    import zipfile

    try:
        on_disk = os.stat(path).st_size
        with open(path, "rb") as file:
            if not zipfile.is_zipfile(file):
                return  # the legacy format reads each storage from the file itself, as it comes
            records = _zip_record_count(file)
            if records is not None and records > MAX_RECORDS:
                raise UserError(
                    f"{path}: its archive lists {records:,} records, more than any checkpoint has ({MAX_RECORDS:,}); "
                    "refusing to read it: the file was crafted or damaged, use another copy"
                )
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return  # torch.load names what is wrong
    declared = sum(info.file_size for info in infos)
    if declared > MAX_EXPANSION * on_disk + EXPANSION_SLACK:
        largest = max(infos, key=lambda info: info.file_size)
        raise UserError(
            f"{path}: its archive declares {declared / 2**30:.2f} GiB of content in {on_disk / 2**20:.1f} MiB on disk "
            f"({largest.filename}: {largest.file_size:,} bytes, {'compressed' if largest.compress_type else 'stored'}); "
            "refusing to inflate it. torch.save never compresses, so this file was crafted or re-packed: "
            "re-save the weights with torch.save, or use another copy"
        )


def _zip_record_count(file):
    """The record count a zip's end-of-central-directory record claims, without reading the records
    (None where this Python's zipfile does not expose it)."""
    import zipfile

    try:
        end = zipfile._EndRecData(file)
        return None if end is None else int(end[zipfile._ECD_ENTRIES_TOTAL])
    except (AttributeError, IndexError, TypeError):
        return None


def _first_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


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


# --------------------------------------------------------------------------- architecture from shapes


def _count_indexed(state_dict, prefix):
    indices = set()
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    for key in state_dict:
        found = pattern.match(key)
        if found:
            indices.add(int(found.group(1)))
    return max(indices) + 1 if indices else 0


def infer_model_info(state_dict):
    """CLIP(**kwargs) read from a normalized state dict's shapes, plus the config names that match."""
    sd = state_dict
    info = {}
    try:
        if "visual.conv1.weight" in sd and "visual.class_embedding" in sd:  # ViT
            width, _, patch, _ = sd["visual.conv1.weight"].shape
            tokens = sd["visual.positional_embedding"].shape[0]
            grid = int(round((tokens - 1) ** 0.5))
            info.update(
                embed_dim=int(sd["visual.proj"].shape[1]),
                image_resolution=int(grid * patch),
                vision_layers=_count_indexed(sd, "visual.transformer.resblocks."),
                vision_width=int(width),
                vision_patch_size=int(patch),
            )
        elif "visual.attnpool.positional_embedding" in sd:  # ModifiedResNet
            width = int(sd["visual.bn3.weight"].shape[0])
            tokens = sd["visual.attnpool.positional_embedding"].shape[0]
            info.update(
                embed_dim=int(sd["visual.attnpool.c_proj.weight"].shape[0]),
                image_resolution=int(round((tokens - 1) ** 0.5)) * 32,
                vision_layers=[_count_indexed(sd, f"visual.layer{i}.") for i in range(1, 5)],
                vision_width=width,
                vision_patch_size=None,
            )
        else:
            return None
        words = sd["bert.embeddings.word_embeddings.weight"]
        info.update(
            vocab_size=int(words.shape[0]),
            text_hidden_size=int(words.shape[1]),
            text_intermediate_size=int(sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            text_max_position_embeddings=int(sd["bert.embeddings.position_embeddings.weight"].shape[0]),
            text_num_hidden_layers=_count_indexed(sd, "bert.encoder.layer."),
            text_type_vocab_size=int(sd["bert.embeddings.token_type_embeddings.weight"].shape[0]),
        )
    except (KeyError, IndexError, ValueError):
        return None

    vision_name, vision_config = _matching_config_name(info, VISION_SHAPE_KEYS, vision=True)
    text_name, text_config = _matching_config_name(info, TEXT_SHAPE_KEYS, vision=False)
    if vision_config is not None and "vision_head_width" in vision_config:
        info["vision_head_width"] = vision_config["vision_head_width"]
    text_extra = dict(TEXT_DEFAULTS)
    text_extra["text_num_attention_heads"] = max(1, info["text_hidden_size"] // DEFAULT_HEAD_WIDTH)
    if text_config is not None:
        text_extra.update({key: value for key, value in text_config.items() if key.startswith("text_")})
    for key, value in text_extra.items():
        info.setdefault(key, value)
    return {
        "vision_model": vision_name,
        "text_model": text_name,
        "input_resolution": info["image_resolution"],
        "model_info": info,
    }


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
    return [(name, prefix, int(wanted), _count_indexed(state_dict, prefix)) for name, prefix, wanted in stacks]


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
        raise UserError(f"model_config of {path} is not a valid CLIP(**kwargs): {_first_line(error)}") from None
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


def pick_device(device=None):
    """``device`` as given, or CUDA when there is one, else the CPU (decided in devices.py)."""
    from cn_clip_pokemon.devices import pick_device as decide

    return decide(device)


class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns: the model, its preprocessing, where it came from.

    ``preprocess``: an :class:`~cn_clip_pokemon.images.PicturePreprocess` (a path or a PIL image of
    any mode -> the model's input tensor, transparency on white, padded square). ``captions``: the
    candidate captions of the dataset the checkpoint was trained on (the names ``classify`` ranks by
    default), a list of str, or None for a checkpoint that records none (upstream's, older ones).
    """

    def __init__(self, model, preprocess, model_config, path, captions=None):
        self.model = model
        self.preprocess = preprocess
        self.model_config = model_config
        self.path = path
        self.captions = captions

    @property
    def input_resolution(self):
        return int(self.model_config["input_resolution"])

    @property
    def context_length(self):
        # the position table bounds the text length; upstream's models all use 52
        return min(52, int(self.model_config["model_info"]["text_max_position_embeddings"]))


def load_checkpoint(path_or_name, device=None, vision_model=None, text_model=None, input_resolution=None, download_root=None):
    """Like :func:`load_model`, but returns a :class:`LoadedCheckpoint` (config and path too)."""
    from cn_clip.clip.model import CLIP, resize_pos_embed
    from cn_clip.clip.utils import _MODEL_INFO, _MODELS

    from cn_clip_pokemon.images import PicturePreprocess

    path = resolve_checkpoint_path(path_or_name, download_root=download_root)
    saved = read_checkpoint(path)
    state_dict, saved_config = split_checkpoint(saved, path)
    captions = checkpoint_captions(saved, path)
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
        raise UserError(f"model_config of {path} is not a valid CLIP(**kwargs): {_first_line(error)}") from None
    if input_resolution and int(input_resolution) != checkpoint_resolution:
        # a ViT checkpoint trained at one resolution still runs at another: interpolate positions
        resize_pos_embed(state_dict, model)
    load_state_dict_strictly(model, state_dict, path, source)
    device = pick_device(device)
    model = model.float().to(device).eval()
    return LoadedCheckpoint(model, PicturePreprocess(model_config["input_resolution"]), model_config, Path(path), captions)


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


def load_model(path_or_name, device=None, vision_model=None, text_model=None, input_resolution=None, download_root=None):
    """Load any Chinese-CLIP checkpoint or pretrained name; returns ``(model, preprocess)``.

    ``model`` is a ``cn_clip.clip.model.CLIP`` in fp32 and eval mode on ``device`` (CUDA when there is
    one). ``preprocess`` is a :class:`cn_clip_pokemon.images.PicturePreprocess`: it takes a path or a
    PIL image of any mode and opens it exactly as the dataset builder and ``classify`` do
    (transparent pixels composited on white, padded to a square on white, then upstream's
    ``image_transform`` at the model's resolution), so the same picture gets the same answer
    through every door. ``vision_model`` and ``text_model`` force config names;
    ``input_resolution`` runs a ViT at another resolution. :func:`load_checkpoint` gives the same
    plus ``captions``, the names the checkpoint was trained to tell apart.
    """
    loaded = load_checkpoint(
        path_or_name,
        device=device,
        vision_model=vision_model,
        text_model=text_model,
        input_resolution=input_resolution,
        download_root=download_root,
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

    from cn_clip_pokemon.files import atomic_write

    with atomic_write(path) as f:
        torch.save(obj, f)


def save_model(model, path, model_config, epoch=0, step=0, name=None, optimizer_state=None, captions=None):
    """Write ``model`` in our checkpoint format (upstream's keys plus ``model_config``, and
    ``captions`` when given: the names it tells apart), atomically.

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
    atomic_torch_save(checkpoint, path)
    return Path(path)


def file_digest(path, memo_dir=None):
    """SHA-256 of a file's content; with ``memo_dir`` it is remembered until size or mtime change."""
    path = Path(path)
    if path.is_dir():  # a transformers folder: its config and weight files
        from cn_clip_pokemon.huggingface import folder_digest

        return folder_digest(path, memo_dir=memo_dir)
    stat = path.stat()
    signature = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo_file = None
    if memo_dir is not None:
        memo_file = Path(memo_dir) / ("digest-" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16] + ".json")
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
            if {key: memo.get(key) for key in signature} == signature and memo.get("sha256"):
                return memo["sha256"]
        except (OSError, ValueError):
            pass
    value = file_sha256(path)
    if memo_file is not None:
        try:
            with atomic_write(memo_file, "w", encoding="utf-8") as f:
                json.dump(dict(signature, sha256=value), f)
        except OSError:
            pass  # an unwritable cache only costs a re-hash next time
    return value
