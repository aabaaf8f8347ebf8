"""Model-config names -> JSON files: the one resolver for training, loading and upstream's own tools.

A name is a config registered by a plugin (``register_model_configs``: a path to upstream-format
JSON, or the dict itself), else upstream's ``cn_clip/clip/model_configs/NAME.json``. A ``/`` in a
name becomes ``-``, as in upstream (``ViT-L/14`` -> ``ViT-L-14.json``). Every caller gets a file path,
so upstream's code keeps its ``open(path)``: a registered dict is written once to a file named after
its content under the cache root (``files.cache_root()/model_configs/``), so a changed dict
gets a new file and an old one is never read by mistake.

Upstream ``eval()``s a config's ``vision_layers``, so whoever can write that file can run code in
every process that reads it. The folder is therefore one only this user can write (owned by us, no
write bit for group or others; the fallback when the cache root cannot be written is
``$TMPDIR/cn-clip-pokemon-model-configs-UID``, made 0700, or a fresh ``mkdtemp`` folder when that
name is someone else's), and a file found there is used only when its bytes are exactly the
config's text; otherwise it is written again.

Training (``cn_clip.training.data.model_config_file``, patch 0003), the checkpoint loader, upstream's
``load_from_name`` and its eval and deploy scripts (patches 0019, 0020 and 0024) all resolve through here.

The names also work the other way round: :func:`infer_model_info` reads a state dict's architecture
from its tensor shapes and names the registered configs it matches (:func:`matching_config_name`), as
the loader does for a checkpoint without a ``model_config`` and the transformers reader for a folder.
"""
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.hookspecs import VISION_CONFIG_KEYS
from cn_clip_pokemon.model_config_names import (
    UnknownModelConfig,
    normalise_config_name,
    upstream_config_dir,
    upstream_model_config_names,
)

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


def _registered():
    from cn_clip_pokemon.plugins import get_model_configs

    return get_model_configs()


def available_model_configs():
    """Every config name: upstream's first, then those plugins register (each part sorted)."""
    upstream = upstream_model_config_names()
    return sorted(upstream) + sorted(set(_registered()) - upstream)


def model_config_path(name):
    """The JSON file of config ``name`` (see the module docstring); UnknownModelConfig listing the names otherwise."""
    name = normalise_config_name(name)
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


def _config_bytes(name, config):
    try:
        text = json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise UserError(f"model config {name!r} registered by a plugin is not plain JSON data: {error}") from None
    return text.encode("utf-8")


def config_file_name(name, config):
    """The file name a registered config dict is written under: ``NAME.<sha256 of its JSON, 16 hex>.json``."""
    return _file_name(normalise_config_name(name), _config_bytes(name, config))


def _file_name(name, data):
    return f"{name}.{hashlib.sha256(data).hexdigest()[:16]}.json"


def _cached_config_file(name, config):
    """A registered dict as a JSON file named after its content, written once (atomically), in a
    folder only this user can write, and checked byte for byte before it is used."""
    from cn_clip_pokemon.files import cache_root

    data = _config_bytes(name, config)
    filename = _file_name(name, data)
    tried = []
    for make_folder in (lambda: _own_folder(cache_root() / "model_configs"), _temporary_folder):
        try:
            folder = make_folder()
            return _verified_file(folder / filename, data)
        except OSError as error:
            tried.append(f"{getattr(error, 'filename', None) or error}: {error.strerror or error}")
            continue  # an unwritable or untrusted cache root: the temporary folder next
    raise UserError(f"cannot write model config {name!r} to a folder only this user can write ({'; '.join(tried)})")


def _own_folder(folder, mode=0o700):
    """``folder``, made with ``mode`` if missing; an OSError unless it is a real folder (not a link)
    owned by this user that no other user can write."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, mode)
    except FileExistsError:
        pass  # checked below, like any folder found
    status = os.lstat(folder)
    if not stat.S_ISDIR(status.st_mode):
        raise OSError(errno.ENOTDIR, "not a folder (or a symbolic link), not used for model configs", str(folder))
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        raise OSError(errno.EPERM, f"owned by user {status.st_uid}, not by this user, not used for model configs", str(folder))
    if status.st_mode & 0o022:
        raise OSError(errno.EPERM, "writable by other users, not used for model configs", str(folder))
    return folder


_PRIVATE_FOLDER = None  # this process's mkdtemp folder, when the shared name is taken


def _temporary_folder():
    """``$TMPDIR/cn-clip-pokemon-model-configs-UID`` (0700, ours), or when that name belongs to
    someone else (or is not private), a fresh private folder of this process, removed at exit."""
    global _PRIVATE_FOLDER
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    shared = Path(tempfile.gettempdir()) / f"cn-clip-pokemon-model-configs-{uid}"
    try:
        folder = _own_folder(shared)
        if stat.S_IMODE(os.lstat(folder).st_mode) & 0o077:
            os.chmod(folder, 0o700)  # ours, but readable by others: made private again
        return folder
    except OSError:
        pass
    if _PRIVATE_FOLDER is None or not _PRIVATE_FOLDER.is_dir():
        import atexit
        import shutil

        _PRIVATE_FOLDER = Path(tempfile.mkdtemp(prefix="cn-clip-pokemon-model-configs-"))  # 0700, ours
        atexit.register(shutil.rmtree, _PRIVATE_FOLDER, True)
    return _PRIVATE_FOLDER


def _verified_file(path, data):
    """``path`` holding exactly ``data``: a file already there is read (never following a link) and
    used only when its bytes are ``data``; anything else is replaced atomically."""
    from cn_clip_pokemon.files import atomic_write

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        found = None  # missing, a link, or unreadable: written below
    else:
        with os.fdopen(fd, "rb") as file:
            found = file.read(len(data) + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    if found != data:
        with atomic_write(path, "wb") as file:
            file.write(data)
    return path


# --------------------------------------------------------------------------- configs by name


def read_model_config(name):
    """The config dict of a vision or text config name (vision_layers parsed to int or list)."""
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


def matching_config_name(wanted, vision, keys=None):
    """``(name, config)`` of the first vision (or text) config, upstream's names first, whose values
    equal ``wanted``'s: at ``keys`` (those the tensor shapes decide), or at every key the config has
    when ``keys`` is None (a head width ``wanted`` leaves out counting as upstream's 64);
    ``(None, None)`` when none does."""
    for name in available_model_configs():
        try:
            config = read_model_config(name)
        except (OSError, ValueError, UserError):
            continue
        if _is_vision_config(config) != vision:
            continue
        if keys is None:
            fits = all(wanted.get(key, DEFAULT_HEAD_WIDTH if key == "vision_head_width" else None) == value for key, value in config.items())
        else:
            fits = all(config.get(key) == wanted.get(key) for key in keys)
        if fits:
            return name, config
    return None, None


# --------------------------------------------------------------------------- architecture from shapes


def count_indexed(state_dict, prefix):
    """How many numbered blocks ``prefix{N}.`` the keys of ``state_dict`` hold (the highest N + 1)."""
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
                vision_layers=count_indexed(sd, "visual.transformer.resblocks."),
                vision_width=int(width),
                vision_patch_size=int(patch),
            )
        elif "visual.attnpool.positional_embedding" in sd:  # ModifiedResNet
            width = int(sd["visual.bn3.weight"].shape[0])
            tokens = sd["visual.attnpool.positional_embedding"].shape[0]
            info.update(
                embed_dim=int(sd["visual.attnpool.c_proj.weight"].shape[0]),
                image_resolution=int(round((tokens - 1) ** 0.5)) * 32,
                vision_layers=[count_indexed(sd, f"visual.layer{i}.") for i in range(1, 5)],
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
            text_num_hidden_layers=count_indexed(sd, "bert.encoder.layer."),
            text_type_vocab_size=int(sd["bert.embeddings.token_type_embeddings.weight"].shape[0]),
        )
    except (KeyError, IndexError, ValueError):
        return None

    vision_name, vision_config = matching_config_name(info, vision=True, keys=VISION_SHAPE_KEYS)
    text_name, text_config = matching_config_name(info, vision=False, keys=TEXT_SHAPE_KEYS)
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
