"""What a command may delete: only what it can prove it wrote.

A *listing* (``{relative path: kind}``, kinds FILE, LINK, OTHER and FOLDER) says what a command
writes, from a fixed layout (the builder) or from its own marker file (fetch-sprites, export-hf, the
demo's :class:`Ledger`). :func:`foreign_entries` names what a folder holds beyond its listing,
:func:`remove_listed` deletes the listed entries only, each while it is still of the listed kind, and
a listed folder only once it is empty; :func:`keep_additions` carries the user's files into a folder
about to be swapped in, and :func:`clean_leftovers` undoes what killed swaps
(:func:`cn_clip_pokemon.files.replace_directory`) left.
"""
import json
import os
import re
import shutil
import stat
from pathlib import Path

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write, try_lock
from cn_clip_pokemon.safe_reading import load_json_file, printable


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
