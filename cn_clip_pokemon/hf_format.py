"""Hugging Face transformers' ChineseCLIP folder format, both ways: our weights and configs in its
names and back, reading such a folder as a checkpoint and writing one's files.

**In**: a folder in the Hub's layout (``config.json`` with ``model.safetensors`` or
``pytorch_model.bin``, or their sharded ``*.index.json``) is read wherever a checkpoint is:
:func:`read_hf_folder` turns it into our checkpoint shape (upstream's keys plus ``model_config``),
so ``load_model``, ``classify --checkpoint``, ``train --pretrained`` and ``--resume`` take it.
safetensors are read without pickle, ``.bin`` files with ``weights_only=True``. Reading needs
neither transformers nor a network; writing (:func:`write_hf_files`, for
:mod:`cn_clip_pokemon.hf_export`) needs transformers (the ``hf`` extra).

The two layouts hold the same numbers under other names; the vision tower's fused attention
projection (``in_proj_weight``) is split into ``q_proj``/``k_proj``/``v_proj`` and the two output
projections are transposed, so cn_clip -> transformers -> cn_clip gives the very same tensors.
transformers' ChineseCLIP is a ViT with a BERT: a ResNet vision tower (RN50) cannot be expressed.

This module sits below :mod:`cn_clip_pokemon.checkpoint`, which reads transformers folders through
it: it never imports checkpoint.
"""
import re
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

from cn_clip_pokemon.errors import UserError, install_hint

CONFIG_FILE = "config.json"
# config.json's entry for a checkpoint's framing other than "as-is" (transformers keeps unknown
# config entries as attributes; its image processor cannot frame, our loader reads it back)
FRAMING_ENTRY = "cn_clip_pokemon_framing"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
# (single file, sharded index), best first: safetensors never run code
WEIGHT_FILES = ((SAFETENSORS_FILE, SAFETENSORS_FILE + ".index.json"), (PICKLE_FILE, PICKLE_FILE + ".index.json"))
CAPTIONS_FILE = "captions.json"
VOCAB_FILE = "vocab.txt"
JSON_LIMIT = 16 << 20  # the most read of a JSON file in a folder we did not write (config, shard index, captions)

# transformers' defaults for the fields a config.json may leave out (ChineseCLIP*Config in 5.x);
# tests/test_huggingface.py checks them against the installed classes
TEXT_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 512, "hidden_act": "gelu",
    "layer_norm_eps": 1e-12, "initializer_range": 0.02, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "type_vocab_size": 2,
}
VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
MODEL_DEFAULTS = {"projection_dim": 512}
# what cn_clip's towers are built with, whatever the config says
CN_CLIP_VISION_EPS = 1e-5
CN_CLIP_TEXT_EPS = 1e-12
CN_CLIP_TEXT_ACTIVATIONS = ("gelu", "relu", "swish", "gelu_new")  # cn_clip.clip.modeling_bert.ACT2FN
VISION_ACTIVATION = "quick_gelu"  # cn_clip's QuickGELU
VISION_MLP_RATIO = 4


class NotExpressible(UserError):
    """transformers' ChineseCLIP cannot hold this architecture; the message names the field."""


def require_transformers():
    """transformers (with ChineseCLIPModel) and safetensors, or a one-line UserError saying what to install."""
    try:
        import safetensors  # noqa: F401
        import transformers
        from transformers import ChineseCLIPModel  # noqa: F401  (an older transformers lacks it)
    except ImportError:
        raise UserError(f"Hugging Face transformers is not installed (needed with safetensors for this): {install_hint('hf')}") from None
    return transformers


# --------------------------------------------------------------------------- key names

# cn_clip name <-> transformers name, read in both directions; {layer}, {param} and {rest} stand for the
# parts that carry over. The fused attention projection and the transposed projections are handled apart.
_NAMES = [
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.ln_pre.{param}", "vision_model.pre_layrnorm.{param}"),
    ("visual.ln_post.{param}", "vision_model.post_layernorm.{param}"),
    ("visual.transformer.resblocks.{layer}.attn.out_proj.{param}", "vision_model.encoder.layers.{layer}.self_attn.out_proj.{param}"),
    ("visual.transformer.resblocks.{layer}.ln_1.{param}", "vision_model.encoder.layers.{layer}.layer_norm1.{param}"),
    ("visual.transformer.resblocks.{layer}.ln_2.{param}", "vision_model.encoder.layers.{layer}.layer_norm2.{param}"),
    ("visual.transformer.resblocks.{layer}.mlp.c_fc.{param}", "vision_model.encoder.layers.{layer}.mlp.fc1.{param}"),
    ("visual.transformer.resblocks.{layer}.mlp.c_proj.{param}", "vision_model.encoder.layers.{layer}.mlp.fc2.{param}"),
    ("bert.{rest}", "text_model.{rest}"),
    ("logit_scale", "logit_scale"),
]
_PARTS = {"layer": r"(?P<layer>\d+)", "param": r"(?P<param>weight|bias)", "rest": r"(?P<rest>.+)"}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_FUSED = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_SPLIT = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
# buffers some transformers versions saved; rebuilt by the model, never weights
_HF_BUFFERS = re.compile(r"(text_model|vision_model)\.embeddings\.(position_ids|token_type_ids)")


def _pattern(template):
    """A template of :data:`_NAMES` as a regular expression with named groups."""
    pattern = re.escape(template)
    for part, group in _PARTS.items():
        pattern = pattern.replace(re.escape("{" + part + "}"), group)
    return re.compile(pattern)


_TO_HF = [(_pattern(cn), hf) for cn, hf in _NAMES]
_FROM_HF = [(_pattern(hf), cn) for cn, hf in _NAMES]


def _renamed(key, table):
    for pattern, template in table:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def _to_hf_name(key):
    return _renamed(key, _TO_HF)


def to_hf_state_dict(state_dict):
    """transformers' ``ChineseCLIPModel`` state dict from a plain cn_clip one (no ``module.``)."""
    converted = OrderedDict()
    for key, value in state_dict.items():
        fused = _FUSED.fullmatch(key)
        if fused:
            layer, kind = fused.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                converted[f"vision_model.encoder.layers.{layer}.self_attn.{name}_proj.{kind}"] = part.clone()
            continue
        if key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        name = _to_hf_name(key)
        if name is None:
            raise UserError(f"cannot convert {key}: transformers' ChineseCLIPModel has no such weight")
        converted[name] = value
    return converted


def from_hf_state_dict(state_dict):
    """A plain cn_clip state dict from transformers' ``ChineseCLIPModel`` one; keys it does not know
    keep their name (the strict load then reports them), buffers and the unused pooler are dropped."""
    import torch

    converted, fused = OrderedDict(), {}
    inverse_transposed = {hf: cn for cn, hf in _TRANSPOSED.items()}
    for key, value in state_dict.items():
        if _HF_BUFFERS.fullmatch(key) or key.startswith("text_model.pooler."):
            continue
        split = _SPLIT.fullmatch(key)
        if split:
            layer, name, kind = split.groups()
            fused.setdefault((int(layer), kind), {})[name] = value
            continue
        if key in inverse_transposed:
            converted[inverse_transposed[key]] = value.t().contiguous()
            continue
        converted[_renamed(key, _FROM_HF) or key] = value
    for (layer, kind), parts in sorted(fused.items()):
        name = f"visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"
        if set(parts) != set("qkv"):
            raise UserError(f"vision layer {layer} has {'/'.join(sorted(parts))} projections of its attention but not all of q, k and v")
        converted[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


# --------------------------------------------------------------------------- configurations


def hf_architecture(model_info):
    """``(vision_config, text_config, projection_dim)`` for transformers from CLIP's arguments, or
    :class:`NotExpressible` naming the field transformers cannot hold."""
    layers = model_info.get("vision_layers")
    if isinstance(layers, (list, tuple)) or model_info.get("vision_patch_size") is None:
        raise NotExpressible(
            f"vision_layers={list(layers) if isinstance(layers, (list, tuple)) else layers!r}: a ResNet vision tower "
            "(like RN50) cannot be a transformers ChineseCLIPModel, whose vision tower is a ViT only; "
            "keep this checkpoint in cn_clip's format"
        )
    if model_info.get("text_hidden_act") not in CN_CLIP_TEXT_ACTIVATIONS:
        raise NotExpressible(f"text_hidden_act={model_info.get('text_hidden_act')!r}: transformers' ChineseCLIP text tower takes {', '.join(CN_CLIP_TEXT_ACTIVATIONS)}")
    width = int(model_info["vision_width"])
    head_width = int(model_info.get("vision_head_width", 64))
    heads = width // head_width
    if heads < 1 or width % heads:
        raise NotExpressible(f"vision_head_width={head_width} with vision_width={width}: transformers needs the width split into whole heads")
    text_width, text_heads = int(model_info["text_hidden_size"]), int(model_info["text_num_attention_heads"])
    if text_width % text_heads:
        raise NotExpressible(f"text_num_attention_heads={text_heads} does not divide text_hidden_size={text_width}")
    vision = {
        "hidden_size": width,
        "intermediate_size": width * VISION_MLP_RATIO,
        "num_hidden_layers": int(layers),
        "num_attention_heads": heads,
        "num_channels": 3,
        "image_size": int(model_info["image_resolution"]),
        "patch_size": int(model_info["vision_patch_size"]),
        "hidden_act": VISION_ACTIVATION,
        "layer_norm_eps": CN_CLIP_VISION_EPS,
        "projection_dim": int(model_info["embed_dim"]),
    }
    text = {
        "vocab_size": int(model_info["vocab_size"]),
        "hidden_size": text_width,
        "intermediate_size": int(model_info["text_intermediate_size"]),
        "num_hidden_layers": int(model_info["text_num_hidden_layers"]),
        "num_attention_heads": text_heads,
        "max_position_embeddings": int(model_info["text_max_position_embeddings"]),
        "type_vocab_size": int(model_info["text_type_vocab_size"]),
        "hidden_act": model_info["text_hidden_act"],
        "hidden_dropout_prob": float(model_info["text_hidden_dropout_prob"]),
        "attention_probs_dropout_prob": float(model_info["text_attention_probs_dropout_prob"]),
        "initializer_range": float(model_info["text_initializer_range"]),
        "layer_norm_eps": CN_CLIP_TEXT_EPS,
    }
    return vision, text, int(model_info["embed_dim"])


def _square(value, field, where):
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise UserError(f"{where}: {field}={list(value)} is not square; cn_clip's ViT takes square pictures and patches only")
        value = value[0]
    return value


def model_info_from_hf_config(config, where):
    """CLIP(**kwargs) for a transformers ChineseCLIP ``config.json`` dict, or a UserError naming the
    field cn_clip cannot build."""
    if not isinstance(config, dict):
        raise UserError(f"{where} is not a JSON object")
    model_type = config.get("model_type")
    if model_type != "chinese_clip":
        raise UserError(f"{where} describes a transformers {model_type or 'unnamed'} model, not chinese_clip (ChineseCLIPModel)")

    def merged(kind, defaults):
        part = dict(defaults)
        for key in (f"{kind}_config", f"{kind}_config_dict"):  # the *_dict of older configs wins, as in transformers
            if isinstance(config.get(key), dict):
                part.update(config[key])
        return part

    vision, text = merged("vision", VISION_DEFAULTS), merged("text", TEXT_DEFAULTS)
    checks = [
        ("vision_config.hidden_act", vision["hidden_act"], VISION_ACTIVATION),
        ("vision_config.num_channels", vision["num_channels"], 3),
        ("vision_config.intermediate_size", vision["intermediate_size"], VISION_MLP_RATIO * vision["hidden_size"]),
    ]
    for field, found, wanted in checks:
        if found != wanted:
            raise UserError(f"{where}: {field}={found!r}, but cn_clip's ViT has {wanted!r}; this model cannot be loaded as cn_clip")
    for field, found, wanted in (("vision_config.layer_norm_eps", vision["layer_norm_eps"], CN_CLIP_VISION_EPS),
                                 ("text_config.layer_norm_eps", text["layer_norm_eps"], CN_CLIP_TEXT_EPS)):
        if not isinstance(found, (int, float)) or abs(found - wanted) > wanted * 1e-6:
            raise UserError(f"{where}: {field}={found!r}, but cn_clip's towers use {wanted}; this model cannot be loaded as cn_clip")
    if text["hidden_act"] not in CN_CLIP_TEXT_ACTIVATIONS:
        raise UserError(f"{where}: text_config.hidden_act={text['hidden_act']!r}; cn_clip's BERT takes {', '.join(CN_CLIP_TEXT_ACTIVATIONS)}")
    if text.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{where}: text_config.position_embedding_type={text['position_embedding_type']!r}; cn_clip's BERT has absolute positions only")
    width, heads = vision["hidden_size"], vision["num_attention_heads"]
    if not isinstance(width, int) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise UserError(f"{where}: vision_config.num_attention_heads={heads!r} does not divide hidden_size={width!r}")
    return {
        "embed_dim": config.get("projection_dim", MODEL_DEFAULTS["projection_dim"]),
        "image_resolution": _square(vision["image_size"], "vision_config.image_size", where),
        "vision_layers": vision["num_hidden_layers"],
        "vision_width": width,
        "vision_patch_size": _square(vision["patch_size"], "vision_config.patch_size", where),
        "vision_head_width": width // heads,
        "vocab_size": text["vocab_size"],
        "text_attention_probs_dropout_prob": text["attention_probs_dropout_prob"],
        "text_hidden_act": text["hidden_act"],
        "text_hidden_dropout_prob": text["hidden_dropout_prob"],
        "text_hidden_size": text["hidden_size"],
        "text_initializer_range": text["initializer_range"],
        "text_intermediate_size": text["intermediate_size"],
        "text_max_position_embeddings": text["max_position_embeddings"],
        "text_num_attention_heads": text["num_attention_heads"],
        "text_num_hidden_layers": text["num_hidden_layers"],
        "text_type_vocab_size": text["type_vocab_size"],
    }


# --------------------------------------------------------------------------- reading a folder


def hf_weight_files(folder):
    """The weight files of a transformers folder (one, or the shards its index names), best kind
    first; [] when it has none."""
    folder = Path(folder)
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            from cn_clip_pokemon.safe_reading import load_json_file

            where = folder / index
            weight_map = load_json_file(where, JSON_LIMIT, "a shard index", "re-download the model")
            try:
                shards = sorted(set(weight_map["weight_map"].values()))
            except (KeyError, TypeError, AttributeError) as error:
                raise UserError(f"{where} is not a readable shard index ({type(error).__name__}): re-download the model") from None
            for shard in shards:
                if not isinstance(shard, str) or Path(shard).name != shard:
                    raise UserError(f"{where} names a shard {shard!r} outside its folder; refusing to read it")
            return [folder / shard for shard in shards]
    return []


def is_hf_folder(path):
    """Whether ``path`` is a folder with ``config.json`` and transformers weights."""
    path = Path(path)
    try:
        return path.is_dir() and (path / CONFIG_FILE).is_file() and bool(hf_weight_files(path))
    except UserError:
        return True  # it is one, a damaged one: reading it says what is wrong


def check_hf_folder(path):
    """``path`` when it is a transformers folder, else a one-line UserError saying what a folder needs."""
    path = Path(path)
    if is_hf_folder(path):
        return path
    _refuse_folder(path)


def hf_folder_weights(path):
    """The weight files (:func:`hf_weight_files`) of the transformers folder ``path``, else the one-line
    UserError of :func:`check_hf_folder` (or of a damaged shard index)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        files = hf_weight_files(path)
        if files:
            return files
    _refuse_folder(path)


def _refuse_folder(path):
    pt_files = sorted(path.glob("*.pt")) if path.is_dir() else []
    hint = f" (did you mean {pt_files[-1]}?)" if pt_files else ""
    if not (path / CONFIG_FILE).is_file():
        raise UserError(
            f"{path} is a folder without {CONFIG_FILE}: pass a checkpoint file (.pt){hint}, or a transformers "
            f"ChineseCLIP folder ({CONFIG_FILE} with {SAFETENSORS_FILE} or {PICKLE_FILE})"
        )
    raise UserError(f"{path} has {CONFIG_FILE} but no {SAFETENSORS_FILE} or {PICKLE_FILE}: the weights are missing{hint}")


def _read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path} needs the safetensors package to be read: {install_hint('hf')}") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError, MemoryError on a bogus header...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"{path} is not a readable safetensors file (truncated or another kind of file): {first}") from None


def read_hf_weights(folder, weight_files=None):
    """Every tensor of a transformers folder (of ``weight_files``, its :func:`hf_weight_files` when
    given), in transformers' names (no pickle for safetensors)."""
    from cn_clip_pokemon.checkpoint_files import read_checkpoint_file

    tensors = OrderedDict()
    for path in hf_weight_files(folder) if weight_files is None else weight_files:
        if path.suffix == ".safetensors":
            part = _read_safetensors(path)
        else:
            part = read_checkpoint_file(path)  # weights_only=True, one-line errors
            if isinstance(part, dict) and isinstance(part.get("state_dict"), dict):
                part = part["state_dict"]
        if not isinstance(part, dict):
            raise UserError(f"{path} holds a {type(part).__name__}, not a dict of tensors")
        tensors.update(part)
    return tensors


def read_captions(folder):
    """What an export's ``captions.json`` holds, unchecked (checkpoint.checkpoint_captions checks it as
    it checks a checkpoint's), or None when there is none or it is not readable JSON (said in one line)."""
    from cn_clip_pokemon.safe_reading import load_json_file

    path = Path(folder) / CAPTIONS_FILE
    if not path.is_file():
        return None
    try:
        return load_json_file(path, JSON_LIMIT, "a captions file", "ignored")
    except UserError as error:
        print(f"cn-clip-pokemon: warning: {error}", file=sys.stderr)
        return None


def read_hf_folder(folder):
    """A transformers ChineseCLIP folder as our checkpoint shape: ``{"state_dict", "model_config"}``
    (plus ``"captions"`` when the folder has them), for :func:`cn_clip_pokemon.checkpoint.split_checkpoint`."""
    from cn_clip_pokemon.dataset_format import CAPTIONS_KEY, FRAMING_KEY
    from cn_clip_pokemon.model_config_resolver import matching_config_name
    from cn_clip_pokemon.safe_reading import load_json_file

    folder = Path(folder)
    weight_files = hf_folder_weights(folder)
    where = folder / CONFIG_FILE
    config = load_json_file(where, JSON_LIMIT, "a transformers config", "re-download or re-export the model")
    model_info = model_info_from_hf_config(config, where)
    # the registered configs equal to model_info (None where none is)
    vision_name, _ = matching_config_name(model_info, vision=True)
    text_name, _ = matching_config_name(model_info, vision=False)
    checkpoint = {
        "state_dict": from_hf_state_dict(read_hf_weights(folder, weight_files)),
        "model_config": {
            "vision_model": vision_name,
            "text_model": text_name,
            "input_resolution": model_info["image_resolution"],
            "model_info": model_info,
        },
    }
    captions = read_captions(folder)
    if captions is not None:
        checkpoint[CAPTIONS_KEY] = captions
    if config.get(FRAMING_ENTRY) is not None:
        checkpoint[FRAMING_KEY] = config[FRAMING_ENTRY]  # checked by checkpoint.checkpoint_framing
    return checkpoint


def folder_digest(folder, memo_dir=None):
    """SHA-256 naming a transformers folder's weights and config (for the embedding cache)."""
    import hashlib

    from cn_clip_pokemon.checkpoint_files import file_digest

    parts = [Path(folder) / CONFIG_FILE] + hf_folder_weights(folder)
    combined = hashlib.sha256()
    for path in parts:
        combined.update(f"{path.name}:{file_digest(path, memo_dir=memo_dir)}\n".encode())
    return combined.hexdigest()


# --------------------------------------------------------------------------- writing a folder


def image_processor_settings(resolution):
    """Settings of transformers' ChineseCLIPImageProcessor that match upstream's ``image_transform``."""
    from cn_clip.clip.utils import image_transform
    from torchvision.transforms import Normalize, Resize

    steps = image_transform(resolution).transforms
    resize = next(step for step in steps if isinstance(step, Resize))
    normalize = next(step for step in steps if isinstance(step, Normalize))
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}[resize.interpolation.value]
    side = {"height": int(resolution), "width": int(resolution)}
    return {
        "do_resize": True,
        "size": dict(side),  # both sides: a square picture becomes resolution x resolution, like Resize((r, r))
        "resample": resample,
        "do_center_crop": False,
        "crop_size": dict(side),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in normalize.mean],
        "image_std": [float(v) for v in normalize.std],
        "do_convert_rgb": True,
    }


def upstream_vocab_file():
    """cn_clip's own vocabulary (the Chinese BERT vocab its tokenizer reads)."""
    import cn_clip.clip

    return Path(cn_clip.clip.__file__).parent / VOCAB_FILE


def write_hf_files(folder, state_dict, model_info, context_length, framing="as-is"):
    """config.json, model.safetensors, tokenizer and processor files of a ChineseCLIPModel in ``folder``;
    a ``framing`` other than "as-is" is kept in config.json (FRAMING_ENTRY)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel, ChineseCLIPProcessor

    vision, text, projection_dim = hf_architecture(model_info)
    try:
        config = ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    except (ValueError, TypeError) as error:
        raise NotExpressible(f"transformers refuses the configuration: {str(error).splitlines()[0]}") from None
    config.architectures = ["ChineseCLIPModel"]
    if framing != "as-is":
        setattr(config, FRAMING_ENTRY, framing)
    hf_state = to_hf_state_dict(state_dict)
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in ChineseCLIPModel(config).state_dict().items()}
    got = {key: tuple(value.shape) for key, value in hf_state.items()}
    if got != expected:
        differing = sorted(set(got) ^ set(expected)) or [key for key in expected if got[key] != expected[key]]
        raise UserError(f"the converted weights do not fit transformers' ChineseCLIPModel (first: {differing[0]}); please report this")
    config.save_pretrained(folder)
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in hf_state.items()}
    save_file(tensors, str(Path(folder) / SAFETENSORS_FILE), metadata={"format": "pt"})

    tokenizer = BertTokenizer(vocab=str(upstream_vocab_file()), do_lower_case=True, model_max_length=int(context_length))
    image_processor = ChineseCLIPImageProcessor(**image_processor_settings(model_info["image_resolution"]))
    ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    image_processor.save_pretrained(folder)  # preprocessor_config.json, for transformers 4.x too
    shutil.copyfile(upstream_vocab_file(), Path(folder) / VOCAB_FILE)  # the slow BertTokenizer's file
