"""The embedding cache: where a checkpoint's cached embeddings live, their keys, reading and writing.

Embeddings depend only on what :func:`checkpoint_identity` names (the checkpoint file's SHA-256,
remembered while its size and mtime stay the same, and the model built from it) plus what each
caller adds to the key (names, templates, context length; a split and its picture file). They are
kept in ``<checkpoint>.cache/`` beside the checkpoint; when the checkpoint's folder is read-only,
in a folder per checkpoint under ``files.cache_root()/embeddings``. Entries are written atomically
and read with ``weights_only=True``: a damaged or foreign entry is recomputed, never trusted.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

from cn_clip_pokemon.files import cache_root

CACHE_FORMAT = 1


def cache_dir_for(checkpoint_path):
    """``<checkpoint>.cache/`` beside the checkpoint, or its own folder under the cache root when
    the checkpoint's folder cannot be written."""
    checkpoint_path = Path(checkpoint_path).resolve()
    beside = checkpoint_path.parent / f"{checkpoint_path.name}.cache"
    try:
        if not beside.is_dir() and os.access(checkpoint_path.parent, os.W_OK):
            beside.mkdir(exist_ok=True)
        if beside.is_dir() and os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    fallback = cache_root() / "embeddings" / hashlib.sha1(str(checkpoint_path).encode("utf-8")).hexdigest()[:16]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _canonical(parts):
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)


def cache_key(parts):
    """A short file-name-safe key of everything an entry was made from (a JSON-able dict)."""
    return hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()[:24]


def read_cache(path, parts):
    """The cached payload when ``path`` exists and was made from exactly ``parts``, else None."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None
    if not isinstance(payload, dict) or payload.get("parts") != _canonical(parts):
        return None
    return payload


def write_cache(path, parts, **tensors):
    """Store ``tensors`` at ``path`` with the ``parts`` they were made from; a failure only warns."""
    from cn_clip_pokemon.checkpoint import atomic_torch_save

    payload = {"parts": _canonical(parts)}
    payload.update(tensors)
    try:
        atomic_torch_save(payload, path)
    except OSError as error:
        print(f"cn-clip-pokemon: warning: cannot write the embedding cache {path}: {error}", file=sys.stderr)


def checkpoint_identity(loaded):
    """What the embeddings of a loaded checkpoint depend on: file content and the model built."""
    from cn_clip_pokemon.checkpoint_sources import checkpoint_digest

    return {
        "format": CACHE_FORMAT,
        "checkpoint_sha256": checkpoint_digest(loaded.path, memo_dir=cache_dir_for(loaded.path)),
        "model_info": loaded.model_config["model_info"],
    }
