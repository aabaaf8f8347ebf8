"""Files, once: atomic replacement, SHA-256 of a file, the cache root, and how many cores we may use.

Every stage that writes a file a user keeps (a checkpoint, a grid, a converted text file, a cache
entry, a fetched font) writes it through :func:`atomic_write`: a temporary file in the same folder,
flushed and fsynced, then renamed over the target, so a killed process never leaves half a file.
"""
import contextlib
import errno
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def cache_root():
    """``$XDG_CACHE_HOME/cn-clip-pokemon`` (``~/.cache/cn-clip-pokemon``): npm tarballs, fonts,
    model configs given as dicts, and embedding caches of checkpoints in read-only folders."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cn-clip-pokemon"


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, newline=None):
    """``with atomic_write(path) as f: ...``: ``path`` holds the new content, whole, or is untouched.

    The folder is created if needed; on any exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
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


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange_paths(first, second):
    """Swap two paths in one atomic step (Linux ``renameat2`` RENAME_EXCHANGE); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or filesystem without it
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(second))


def replace_directory(new, target):
    """Put the finished folder ``new`` (a dataset, a sprite folder) at ``target``, which at no instant
    lacks a complete one. Without an atomic swap the old one waits in ``.NAME.old-*`` while the new one
    moves in; the builder's next run puts it back if a kill came between the two renames."""
    # mkdtemp makes the folder private (0700); give it the permissions a plain mkdir would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if exchange_paths(new, target):
        # ``new`` now holds the old dataset; if this removal is cut short, the next build finishes it.
        shutil.rmtree(new, ignore_errors=True)
        return
    # No atomic swap here: move the old dataset aside, then the new one in. A build killed between
    # the two renames leaves the old one in .NAME.old-*, and the next build puts it back.
    holder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.replace(target, holder / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(holder / target.name, target)
        holder.rmdir()
        raise
    shutil.rmtree(holder, ignore_errors=True)
