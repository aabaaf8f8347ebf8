"""Where a checkpoint comes from: a file, a transformers ``ChineseCLIPModel`` folder, or an upstream
pretrained name (``ViT-B-16``...) found like upstream's ``load_from_name`` does, or downloaded from
the Hugging Face hub when it is reachable; each read and named by digest the same way.

A file is read by :mod:`cn_clip_pokemon.checkpoint_files` (``weights_only``, never running code), a
folder by the transformers reader (safetensors without pickle, ``.bin`` files like checkpoint files).
"""
import os
from pathlib import Path

from cn_clip_pokemon.checkpoint_files import file_digest, first_line, read_checkpoint_file
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.hf_format import check_hf_folder, folder_digest, read_hf_folder


def resolve_checkpoint_path(path_or_name, download_root=None):
    """A checkpoint file path for a path or an upstream pretrained name (``ViT-B-16``...)."""
    from cn_clip.clip.utils import _MODELS

    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.is_file():
        return candidate
    if candidate.is_dir():  # a transformers ChineseCLIP folder (the Hub's layout), or a one-line error
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
            raise UserError(f"{looked} and the download failed ({type(error).__name__}: {first_line(error)}); {hint}") from None
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


def read_checkpoint(path):
    """What a checkpoint file holds (:func:`~cn_clip_pokemon.checkpoint_files.read_checkpoint_file`), or a
    transformers folder in our checkpoint's shape (safetensors without pickle, .bin with weights_only)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path)
    return read_checkpoint_file(path)


def checkpoint_digest(path, memo_dir=None):
    """SHA-256 naming a checkpoint: a file's content, or a transformers folder's config and weight
    files; with ``memo_dir`` each file's is remembered until its size or mtime change."""
    path = Path(path)
    if path.is_dir():
        return folder_digest(path, memo_dir=memo_dir)
    return file_digest(path, memo_dir=memo_dir)
