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
"""
import errno
import hashlib
import importlib.util
import json
import os
import stat
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError


class UnknownModelConfig(UserError, ValueError):
    """A model-config name that neither a plugin nor upstream has (a ValueError too, as upstream's callers expect)."""


def upstream_config_dir():
    """Upstream's ``cn_clip/clip/model_configs`` folder, found without importing cn_clip."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("cn_clip is not installed: pip install cn_clip==1.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "clip" / "model_configs"


def _normalise(name):
    if not isinstance(name, str) or not name:
        raise UnknownModelConfig(f"a model config name must be a non-empty string, not {name!r}")
    return name.replace("/", "-")


def _registered():
    from cn_clip_pokemon.plugins import get_model_configs

    return get_model_configs()


def _upstream_names():
    return {path.stem for path in upstream_config_dir().glob("*.json")}


def available_model_configs():
    """Every config name: upstream's first, then those plugins register (each part sorted)."""
    upstream = _upstream_names()
    return sorted(upstream) + sorted(set(_registered()) - upstream)


def model_config_path(name):
    """The JSON file of config ``name`` (see the module docstring); UnknownModelConfig listing the names otherwise."""
    name = _normalise(name)
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
    return _file_name(_normalise(name), _config_bytes(name, config))


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
