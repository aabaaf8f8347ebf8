"""One checkpoint file on disk: read without running code, and its digest remembered.

Files are read with ``torch.load(weights_only=True)`` plus an allow-list of plain numpy scalar types
(upstream's training writes numpy learning rates), so a pickle that would run code is refused, never
executed; a zip archive that declares more content than it can hold is refused before anything is
inflated. Every failure is one line naming the file. A file's SHA-256 can be remembered in a memo
folder until its size or modification time changes (the embedding cache's key).
"""
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write, file_sha256


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


def read_checkpoint_file(path):
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure as a one-line UserError
    (one file; :func:`cn_clip_pokemon.checkpoint_sources.read_checkpoint` reads transformers folders too)."""
    import pickle

    import torch

    path = Path(path)
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
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file): {first_line(error)}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, AttributeError, TypeError, ImportError) as error:
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file): {first_line(error)}"
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


def first_line(error):
    """The first line of an error's message (at most 200 characters), or its type's name."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def file_digest(path, memo_dir=None):
    """SHA-256 of a file's content; with ``memo_dir`` it is remembered until size or mtime change
    (one file; :func:`cn_clip_pokemon.checkpoint_sources.checkpoint_digest` takes folders too)."""
    path = Path(path)
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
