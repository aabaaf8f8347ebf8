"""Files, once: atomic replacement, SHA-256 of a file, the cache root, and how many cores we may use.

Every stage that writes a file a user keeps (a checkpoint, a grid, a converted text file, a cache
entry, a fetched font) writes it through :func:`atomic_write`: a temporary file in the same folder,
flushed and fsynced, then renamed over the target, so a killed process never leaves half a file.
"""
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def cache_root():
    """``$XDG_CACHE_HOME/cn-clip-pokemon`` (``~/.cache/cn-clip-pokemon``): npm tarballs, fonts,
    model configs given as dicts, and embedding caches of checkpoints in read-only folders."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cn-clip-pokemon"


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """``with atomic_write(path) as f: ...``: ``path`` holds the new content, whole, or is untouched.

    The folder is created if needed; on any exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def file_sha256(path):
    """The SHA-256 of a file's content, as hex."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+
            return hashlib.file_digest(f, "sha256").hexdigest()
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()


def available_cores():
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
