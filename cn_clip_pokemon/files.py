"""Files, once: how we write, what we may delete, how we read what others wrote; the cache root,
and how many cores we may use.

- Writing: every stage that writes a file a user keeps (a checkpoint, a grid, a converted text file,
  a cache entry, a fetched font) writes it through :func:`atomic_write`: a temporary file in the same
  folder (``.NAME.XXXXXXXX.tmp``, locked while it is written), flushed and fsynced, then renamed
  over the target, so a killed process never leaves half a file; the next write of that name
  removes the temporary files killed writers left (:func:`remove_stale_temporaries`). A folder
  (a dataset, a sprite folder) is built beside its target and swapped in whole
  (:func:`staged_folder`, :func:`replace_directory`); :func:`clean_leftovers` undoes what a killed
  swap left.
- Deleting: a command deletes only what it can prove it wrote: a *listing* (``{relative path:
  kind}``, kinds FILE, LINK, OTHER and FOLDER) says what it writes, from a fixed layout (the
  builder) or from its own marker file (fetch-sprites, the demo). :func:`foreign_entries` names
  what a folder holds beyond its listing, :func:`remove_listed` deletes the listed entries only,
  each while it is still of the listed kind, and a listed folder only once it is empty.
- Reading files we did not write (manifests, dataset_info.json, text files to convert, pictures):
  :func:`open_regular` never blocks on a FIFO and never opens a device; :func:`read_limited` bounds
  the size, :func:`parse_json` the nesting depth (never a RecursionError), and both fail with one
  line naming the file.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError


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


@contextlib.contextmanager
def staged_folder(target, prefix=None):
    """``with staged_folder(target) as temp: ...``: write a folder in ``temp``; when the block ends
    without an exception it replaces ``target`` whole (:func:`replace_directory`), and on any exception
    it is removed and ``target`` is as it was.

    ``temp`` is a fresh private folder beside ``target`` named ``prefix`` + 8 random characters, by
    default ``.NAME.tmp-``, the name :func:`clean_leftovers` looks for; it is locked while the block
    runs, so a concurrent run's clean-up leaves it alone. The parent folder is created if needed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-" if prefix is None else prefix))
    lock = try_lock(temp)  # tells a concurrent run's clean-up that this folder is in use
    try:
        yield temp
        replace_directory(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


# ---------------------------------------------------------------- what a command may delete

# Kinds of entries in a listing: symlinks are never followed, so a link is its own kind.
FILE, LINK, OTHER, FOLDER = "file", "link", "other", "folder"


def sorted_entries(folder):
    """``os.scandir`` of ``folder``, by name."""
    with os.scandir(folder) as scan:
        return sorted(scan, key=lambda entry: entry.name)


def entry_kind(entry):
    """FILE, LINK, FOLDER or OTHER (a FIFO, a socket, a device) of an ``os.DirEntry``, links not followed."""
    if entry.is_symlink():
        return LINK
    if entry.is_dir(follow_symlinks=False):
        return FOLDER
    if entry.is_file(follow_symlinks=False):
        return FILE
    return OTHER


def flatten_layout(layout, prefix=""):
    """``{relative path: kind}`` from a nested layout (``{name: FILE | {name: ...}}``), folders included."""
    flat = {}
    stack = [(prefix, layout)]
    while stack:
        base, level = stack.pop()
        for name, kind in level.items():
            path = base + name
            if isinstance(kind, dict):
                flat[path] = FOLDER
                stack.append((path + "/", kind))
            else:
                flat[path] = kind
    return flat


def listing(folder, within=None):
    """``{relative path: kind}`` of what ``folder`` holds now, depth first in name order (``a``, ``a/b``,
    ``a/b/c``, ``a/d``, ``e``). Links are never followed; with ``within`` (a listing), only the folders
    it lists are looked into, so a folder it does not list is one entry. A missing ``folder`` holds nothing."""
    found = {}
    if not os.path.isdir(folder) or os.path.islink(folder):
        return found

    def children(directory, prefix):
        return iter([(prefix + entry.name, entry.path, entry_kind(entry)) for entry in sorted_entries(directory)])

    stack = [children(os.fspath(folder), "")]
    while stack:  # a stack of iterators, not recursion: a folder may be nested thousands deep
        for path, full, kind in stack[-1]:
            found[path] = kind
            if kind == FOLDER and (within is None or within.get(path) == FOLDER):
                stack.append(children(full, path + "/"))
                break
        else:
            stack.pop()
    return found


def foreign_entries(folder, allowed):
    """The entries under ``folder`` that the listing ``allowed`` does not list with their kind, top-most
    only (a folder it does not list is named once, with a "/"), in name order."""
    foreign = []
    for path, kind in listing(folder, within=allowed).items():
        if allowed.get(path) != kind:
            foreign.append(path + "/" if kind == FOLDER else path)
    return foreign


def first_foreign(folder, allowed):
    """The first of :func:`foreign_entries`, or None when ``folder`` holds only what ``allowed`` lists."""
    foreign = foreign_entries(folder, allowed)
    return foreign[0] if foreign else None


def remove_listed(folder, listed):
    """Delete, under ``folder``, what the listing ``listed`` names and nothing else; returns what was
    kept (the top-most entries it does not name, as :func:`foreign_entries` gives them).

    An entry goes only while it is still of the listed kind (a file since replaced by a folder
    stays), a listed folder only once it is empty; symlinks are removed, never followed.
    """
    present = listing(folder, within=listed)
    for path, kind in reversed(list(present.items())):  # children before their folder
        if listed.get(path) != kind:
            continue
        full = os.path.join(folder, path)
        try:
            if kind == FOLDER:
                os.rmdir(full)  # fails while it holds something kept
            else:
                os.unlink(full)
        except OSError:
            pass
    try:
        return foreign_entries(folder, listed)
    except FileNotFoundError:
        return []


def keep_additions(out, new, previous, written, command, what):
    """Hard-link into the folder ``new`` (about to be swapped in for ``out``) what ``out`` holds beyond
    the listing ``previous`` (what ``command`` wrote there before): the user's files and other tools'
    outputs, which the swap must keep. Returns their paths (top-most, as :func:`foreign_entries`).

    A UserError, before anything is linked, when one has a name the listing ``written`` (what this run
    writes) holds; and when one cannot be linked (another file system mounted inside, say). ``what``
    names the folder in messages ("sprite folder", "dataset")."""
    out, new = Path(out), Path(new)
    additions = foreign_entries(out, previous)
    shown = printable(str(out))
    for path in additions:
        name = path.rstrip("/")
        taken = name in written or any(other.startswith(name + "/") for other in written) if path.endswith("/") \
            else name in written
        if taken:
            raise UserError(
                f"{shown}/{printable(path)} was not written by {command}, and this run writes that name: move it "
                f"out of {shown} (or choose another --out) and run again; nothing was changed"
            )
    for path in additions:
        name = path.rstrip("/")
        source, target = out / name, new / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not path.endswith("/"):
                os.link(source, target, follow_symlinks=False)
                continue
            target.mkdir()
            shutil.copystat(source, target, follow_symlinks=False)
            for inner, kind in listing(source).items():
                if kind == FOLDER:
                    (target / inner).mkdir()
                    shutil.copystat(source / inner, target / inner, follow_symlinks=False)
                else:
                    os.link(source / inner, target / inner, follow_symlinks=False)
        except OSError as error:
            raise UserError(
                f"cannot keep {shown}/{printable(path)} in the new {what} ({error.strerror or error}): move it "
                f"out of {shown} and run again; nothing was changed"
            ) from None
    return additions


def carried_or_listed(folder, listed, out):
    """Whether everything in ``folder`` is either in the listing ``listed`` or the very same file
    (a hard link, :func:`keep_additions`) as the one at its place in ``out``: a leftover of a killed
    swap whose removal loses nothing."""
    for path, kind in listing(folder).items():
        if listed.get(path) == kind or kind == FOLDER:
            continue
        try:
            here, there = os.lstat(os.path.join(folder, path)), os.lstat(os.path.join(out, path))
        except OSError:
            return False
        if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
            return False
    return True


def holds_marker(folder, name, head):
    """Whether ``folder/name`` is a regular file starting with the bytes ``head`` (a command's own marker)."""
    path = os.path.join(folder, name)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as file:
            return file.read(len(head)) == head
    except OSError:
        return False


TEMPORARY_SUFFIX = r"[a-z0-9_]{8}"  # tempfile.mkdtemp's random part


def clean_leftovers(target, command, owns_old, owns_temporary, complete):
    """Undo what killed :func:`replace_directory` runs of ``command`` left beside ``target``; returns
    one line per thing done.

    ``.NAME.old-*`` holds the previous folder when a swap without rename-exchange was killed between
    its two renames: put back when ``target`` is missing and ``complete(path)`` says it is whole, else
    removed. ``.NAME.tmp-*`` is a killed run's temporary folder: removed unless a running one holds
    its lock. Either is removed only when ``owns_old(path)`` / ``owns_temporary(path)`` prove it holds
    nothing but what ``command`` writes; anything else is left alone, and said so.
    """
    target = Path(target)
    notes = []
    try:
        entries = sorted_entries(target.parent)
    except OSError:
        return notes

    def named(kind):
        pattern = re.escape(f".{target.name}.{kind}-") + TEMPORARY_SUFFIX
        return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False) and re.fullmatch(pattern, entry.name)]

    holders, temps = named("old"), named("tmp")
    if holders and not os.path.lexists(target):
        whole = [holder for holder in holders if complete(os.path.join(holder, target.name))]
        if whole:
            newest = max(whole, key=lambda holder: os.stat(os.path.join(holder, target.name)).st_mtime)
            os.rename(os.path.join(newest, target.name), target)
            notes.append(f"put back the previous {target.name} from {printable(newest)} (a {command} run was stopped "
                         "while replacing it)")
    for holder in holders:
        inside = os.path.join(holder, target.name)
        try:
            names = os.listdir(holder)
            ours = names == [] or (names == [target.name] and not os.path.islink(inside) and os.path.isdir(inside)
                                   and owns_old(inside))
        except OSError:
            ours = False
        notes.append(_remove_leftover(holder, command) if ours else
                     f"left {printable(holder)} alone: it holds files {command} does not write")
    for temp in temps:
        lock = try_lock(temp)
        if lock is None:
            continue  # a run going on now holds it
        try:
            try:
                ours = owns_temporary(temp)
            except OSError:
                ours = False
            notes.append(_remove_leftover(temp, command) if ours else
                         f"left {printable(temp)} alone: it holds files {command} does not write")
        finally:
            os.close(lock)
    return notes


def _remove_leftover(path, command):
    try:
        shutil.rmtree(path)
    except OSError as error:
        return (f"could not remove {printable(path)}, left by an interrupted {command} ({error.strerror or error}); "
                "delete it yourself")
    return f"removed {printable(path)}, left by an interrupted {command}"


def is_utf8(name):
    """Whether ``name`` can be written as UTF-8 (an undecodable file-name byte cannot)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(text):
    r"""``text`` (a str, bytes or path) safe to print and to write as UTF-8: undecodable bytes and
    control characters escaped.

    File names are bytes on Linux; Python hands back the undecodable ones as lone surrogates, which
    no UTF-8 file or terminal accepts. ``0025\udcff.png`` becomes ``0025\\xff.png``, a newline ``\\n``.
    """
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    if text.isprintable():  # the common case, one C loop; lone surrogates are not printable
        return text
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name's byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


class Ledger:
    """What a command wrote in a folder it shares with its user (the demo's work folder), kept in
    the folder's marker file: every entry that appeared there while the command ran.

    ``start()`` notes what the folder holds (the marker keeps that until ``finish()``, so a run killed
    with kill -9 is accounted for by the next one), ``finish()`` adds what appeared since to what the
    command wrote, and ``remove_written()`` deletes exactly that (:func:`remove_listed`). A file the
    user adds while the command runs counts as the command's; one added at any other time never does.
    """

    FORMAT = 1
    LIMIT = 256 << 20

    def __init__(self, folder, marker, command):
        self.folder, self.marker, self.command = Path(folder), marker, command
        self.path = self.folder / marker
        self.written, self.before = {}, None

    def exists(self):
        return holds_marker(self.folder, self.marker, b"{")

    def load(self):
        """Read the marker (a UserError when it is damaged); returns self."""
        shown = printable(self.path)
        record = load_json_file(self.path, self.LIMIT, f"{self.command}'s record of its files",
                                f"it lists what {self.command} wrote: delete it and what {self.command} wrote yourself")
        written, before = (record.get("written"), record.get("before")) if isinstance(record, dict) else (None, None)
        if not is_listing(written) or not (before is None or is_listing(before)):
            raise UserError(f"{shown} is not {self.command}'s record of its files; delete it and what "
                            f"{self.command} wrote yourself")
        self.written, self.before = written, before
        if before is not None:  # a run was killed: what appeared during it was its
            self._settle()
        return self

    def _save(self):
        record = {"format": self.FORMAT, "command": self.command, "written": self.written}
        if self.before is not None:
            record["before"] = self.before
        with atomic_write(self.path, "w", encoding="utf-8") as file:
            json.dump(record, file, ensure_ascii=False)

    def _settle(self):
        now = listing(self.folder)
        for path, kind in now.items():
            if path != self.marker and self.before.get(path) != kind and self.written.get(path) != kind:
                self.written[path] = kind

    def start(self):
        """Before the command writes: what the folder holds now is not its (unless it wrote it before)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.before = {path: kind for path, kind in listing(self.folder).items() if self.written.get(path) != kind}
        self._save()

    def owned(self, under=""):
        """What the command wrote, and what appeared since ``start()``; with ``under``, only inside that
        folder (relative to it)."""
        owned = dict(self.written)
        if self.before is not None:
            for path, kind in listing(self.folder).items():
                if path != self.marker and self.before.get(path) != kind:
                    owned[path] = kind
        if not under:
            return owned
        prefix = under.rstrip("/") + "/"
        return {path[len(prefix):]: kind for path, kind in owned.items() if path.startswith(prefix)}

    def finish(self):
        """After the command wrote (or failed): what appeared is its."""
        if self.before is not None:
            self._settle()
            self.before = None
        self._save()

    def remove_written(self):
        """Delete what the command wrote (the marker stays); returns what was kept, as :func:`remove_listed`."""
        listed = {path: kind for path, kind in self.written.items() if path != self.marker}
        kept = [path for path in remove_listed(self.folder, listed) if path != self.marker]
        self.written = {path: kind for path, kind in listing(self.folder).items()
                        if listed.get(path) == kind and path != self.marker}  # what could not be removed
        self._save()
        return kept


def is_listing(value):
    """Whether ``value`` (parsed JSON) is a listing: names to kinds, as :func:`listing` returns."""
    return isinstance(value, dict) and all(isinstance(kind, str) for kind in value.values())


# ---------------------------------------------------------------- reading files we did not write

MAX_JSON_DEPTH = 100  # dataset_info.json, manifests and our markers need 4; user JSON rarely 20


def mode_name(mode):
    """``FIFO``, ``socket``, ``folder``, ... for a ``st_mode``."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special file"


def open_regular(path):
    """Open a file we did not write, for reading in binary; never blocks and never opens a device.

    Anything but a regular file (a symlink to one is followed) is an OSError whose ``strerror`` says
    what it is: a FIFO would block until some other process writes to it, and a device may be
    endless or change state when opened.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"a {mode_name(mode)}, not a regular file; not opened", os.fspath(path))
    # O_NONBLOCK: if a FIFO took the file's place since the stat, opening it still returns at once
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                         | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"a {mode_name(mode)}, not a regular file; not opened", os.fspath(path))
        file = os.fdopen(descriptor, "rb")
        file.raw.name = os.fspath(path)  # as open() names it, for messages (not the descriptor's number)
        return file
    except BaseException:
        os.close(descriptor)
        raise


def format_size(count):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def read_limited(path, limit, what):
    """The bytes of ``path``, a file we did not write, of at most ``limit`` bytes; a one-line UserError
    naming the file otherwise (too large, not a regular file, unreadable). ``what`` names it in the
    message (``"a manifest"``)."""
    shown = printable(path)
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            # read what the file holds, never asking for a buffer of the limit's size up front
            data, chunk = bytearray(), 1 << 20
            while size <= limit and len(data) <= limit:
                block = file.read(min(chunk, limit + 1 - len(data)))
                if not block:
                    break
                data += block
            data = bytes(data)
    except FileNotFoundError:
        raise UserError(f"{shown}: no such file") from None
    except OSError as error:
        raise UserError(f"cannot read {shown} ({error.strerror or error})") from None
    if size > limit or len(data) > limit:
        raise UserError(f"{shown} holds {format_size(max(size, len(data)))}, more than {format_size(limit)}, "
                        f"the most read as {what}; check that it is the right file")
    return data


class JSONTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`: refused before Python's parser recurses."""


# A JSON string literal (the unrolled form, fast on long strings), and anything but a bracket.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text):
    """How deeply ``text`` (JSON) nests arrays and objects, by its brackets outside strings."""
    brackets = _NOT_A_BRACKET.sub("", JSON_STRING.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def parse_json(text, max_depth=MAX_JSON_DEPTH, **options):
    """``json.loads(text, **options)`` for JSON we did not write: nesting deeper than ``max_depth``
    is a :class:`JSONTooDeep` (a ValueError, like every other bad JSON), never a RecursionError."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    # Cheap first: no text holding fewer brackets can nest deeper.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise JSONTooDeep(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise JSONTooDeep(f"nested too deeply for Python's JSON reader (over {max_depth} levels)") from None


def load_json_file(path, limit, what, advice):
    """A JSON file we did not write (dataset_info.json, a marker), bounded in size and depth; any
    problem is a one-line UserError naming the file and ending with ``advice``."""
    data = read_limited(path, limit, what)
    try:
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "not UTF-8"
    except ValueError as error:
        problem = f"not valid JSON: {getattr(error, 'msg', None) or error}"
    raise UserError(f"{printable(path)} is {problem}; {advice}")


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
