"""Writing files, once: every file a user keeps is written whole or not at all, every folder is
swapped in whole; the cache root, and how many cores we may use.

- Every stage that writes a file a user keeps (a checkpoint, a grid, a converted text file, a cache
  entry, a fetched font) writes it through :func:`atomic_write`: a temporary file in the same folder
  (``.NAME.XXXXXXXX.tmp``, locked while it is written), flushed and fsynced, then renamed over the
  target, so a killed process never leaves half a file; the next write of that name removes the
  temporary files killed writers left (:func:`remove_stale_temporaries`).
- A folder (a dataset, a sprite folder, an export) is written beside its target and swapped in whole
  (:func:`staged_folder`, :func:`replace_directory`); :func:`cn_clip_pokemon.owned_files.clean_leftovers`
  undoes what a killed swap left.
- What a command may delete is in :mod:`cn_clip_pokemon.owned_files`; how we read files we did not
  write, in :mod:`cn_clip_pokemon.safe_reading`.
"""
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.safe_reading import printable


def cache_root():
    """``$XDG_CACHE_HOME/cn-clip-pokemon`` (``~/.cache/cn-clip-pokemon``): npm tarballs, fonts,
    model configs given as dicts, and embedding caches of checkpoints in read-only folders."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cn-clip-pokemon"


# atomic_write's temporary files: ".NAME." + tempfile's 8 random characters + ".tmp"
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, newline=None):
    """``with atomic_write(path) as f: ...``: ``path`` holds the new content, whole, or is untouched.

    The folder is created if needed; on any exception the temporary file is removed. The temporary
    file is locked while it is written, so a killed writer's one (the lock dies with the process) is
    told from a live one: each write first removes the stale temporary files of its own name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, names=(path.name,))
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _lock(fd)
        # mkstemp makes the file private (0600): give it the target's mode, or what open() would
        try:
            permissions = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            permissions = 0o666 & ~umask
        with contextlib.suppress(OSError):
            os.chmod(temporary, permissions)
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if os.name == "posix":
                os.replace(temporary, path)  # still open, so still locked until the name is gone
        if os.name != "posix":  # Windows renames only closed files
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _lock(descriptor):
    """Take an exclusive lock on an open file or folder; False where another process holds one
    (or where there is no flock: Windows, where nothing is then taken for a leftover)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def try_lock(path):
    """A descriptor holding an exclusive lock on ``path`` (a file or a folder), or None when another
    process holds one. A writer holds the lock on what it is writing; the kernel drops it when the
    process dies, even by kill -9, so something nobody holds is a leftover."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # no flock (Windows): never take anything for a leftover
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    if _lock(descriptor):
        return descriptor
    os.close(descriptor)
    return None


def remove_stale_temporaries(folder, names=None):
    """Remove the temporary files killed :func:`atomic_write` calls left in ``folder``: those of the
    target ``names`` (all of ``names`` when it is a compiled pattern it fully matches), never one a
    live writer holds locked. Returns the names removed; errors are ignored (the next write tries again)."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY_NAME.match(entry)
        if match is None:
            continue
        target = match["name"]
        wanted = names.fullmatch(target) if hasattr(names, "fullmatch") else names is None or target in names
        if not wanted:
            continue
        path = os.path.join(folder, entry)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        lock = try_lock(path)
        if lock is None:
            continue  # a live writer's, or no way to tell
        try:
            os.unlink(path)
            removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(lock)
    return removed


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


def replace_directory(new, target, mode=None):
    """Put the finished folder ``new`` (a dataset, a sprite folder) at ``target``, which at no instant
    lacks a complete one. Without an atomic swap the old one waits in ``.NAME.old-*`` while the new one
    moves in; the builder's next run puts it back if a kill came between the two renames. ``mode``:
    the permissions ``target`` gets (default: a plain mkdir's)."""
    # mkdtemp makes the folder private (0700); give it the permissions a plain mkdir would.
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o777 & ~umask
    os.chmod(new, mode)
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


@contextlib.contextmanager
def staged_folder(target, prefix=None, mode=None):
    """``with staged_folder(target) as temp: ...``: write a folder in ``temp``; when the block ends
    without an exception it replaces ``target`` whole (:func:`replace_directory`), and on any exception
    it is removed and ``target`` is as it was.

    ``temp`` is a fresh private folder beside ``target`` named ``prefix`` + 8 random characters, by
    default ``.NAME.tmp-``, the name :func:`cn_clip_pokemon.owned_files.clean_leftovers` looks for; it is locked while the block
    runs, so a concurrent run's clean-up leaves it alone. The parent folder is created if needed.
    ``mode``: the permissions the folder gets when it is swapped in (default: a plain mkdir's).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-" if prefix is None else prefix))
    lock = try_lock(temp)  # tells a concurrent run's clean-up that this folder is in use
    try:
        yield temp
        replace_directory(temp, target, mode)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


# ---------------------------------------------------------------- write failures


def write_failure(error, where, note=None):
    """A one-line UserError for a write into ``where`` that failed: a full disk, a read-only or
    vanished folder. ``error`` is an OSError, or an LMDB error (whose text ends with the OS's);
    ``note`` says what was kept (``the previous dataset is as it was``)."""
    reason = getattr(error, "strerror", None) or str(error).rsplit(": ", 1)[-1] or type(error).__name__
    code = getattr(error, "errno", None)
    full = code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or "No space left" in str(error) or "quota" in str(error).lower()
    hint = "free some space there (or choose a folder on another disk) and run it again" if full else \
        "check that the folder exists and can be written, and run it again"
    return UserError(f"cannot write in {printable(where)} ({reason}){'; ' + note if note else ''}: {hint}")
