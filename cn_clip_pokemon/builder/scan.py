"""Finding the pictures of a build: every entry of the input folder becomes a ``Picture`` or a
skipped entry with its kind and reason (the skip kinds are listed here, for the builder and captions.py).

Either layout (or both mixed), file and folder names parsed by the namer's ``parse_picture_name``
(``Pokedex``, or ``captions.AnyNames``):

    flat                     IMAGES/0001妙蛙种子.png, IMAGES/0025-皮卡丘.jpg, IMAGES/皮卡丘_2.png
    one folder per Pokemon   IMAGES/0025皮卡丘/front_00.png, IMAGES/0025皮卡丘/back_00.png, ...

Names starting with "." (.DS_Store, ._x AppleDouble copies, .sprites.json) are not read and are
listed as hidden; so are symlink loops, dangling symlinks, FIFOs and devices (never opened: a FIFO
would block), folders that cannot be listed and empty folders. A symlink to a picture is read; a
symlinked folder is followed at the top level only, so a loop cannot recur. Names that are not valid
UTF-8 or hold control characters are shown escaped (``0025\\xff.png``); such a flat file cannot be
named a Pokemon and is skipped, one inside a Pokemon's folder is built.
"""
import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.owned_files import sorted_entries
from cn_clip_pokemon.safe_reading import is_utf8, mode_name, printable


class Picture(NamedTuple):
    """One picture found in the input; plain strings, as there may be very many of them."""

    source: str
    relative: str
    number: int
    name: str
    view: str
    # Every caption of the picture (--any-names, --manifest); () for a Pokemon, whose text is ``name``.
    captions: tuple = ()


# The kinds of skipped entries (each entry of ``skipped`` has "file", "kind" and "reason").
SKIP_HIDDEN = "hidden"
SKIP_UNDECODABLE = "name not UTF-8"
SKIP_NAME = "not a Pokemon name"
SKIP_SYMLINK_LOOP = "symlink loop"
SKIP_DANGLING = "dangling symlink"
SKIP_SYMLINKED_FOLDER = "symlinked folder"
SKIP_NOT_A_FILE = "not a regular file"
SKIP_UNREADABLE = "unreadable"
SKIP_EMPTY_FOLDER = "empty folder"
SKIP_OUTPUT = "the --out folder"
SKIP_BAD_PICTURE = "bad picture"
SKIP_DUPLICATE = "duplicate"


def skipped_entry(file, kind, reason):
    """One entry of ``skipped``: the file as shown, its kind (a SKIP_* value) and the reason."""
    return {"file": file, "kind": kind, "reason": reason}


def _entry_type(entry):
    """``("file" | "folder", is_symlink)``, or ``(None, (kind, reason))`` for an entry that is not read.

    Costs nothing for plain files and folders (the directory listing says what they are), one
    stat for a symlink.
    """
    try:
        if not entry.is_symlink():
            if entry.is_file(follow_symlinks=False):
                return "file", False
            if entry.is_dir(follow_symlinks=False):
                return "folder", False
            mode = entry.stat(follow_symlinks=False).st_mode
            return None, (SKIP_NOT_A_FILE, f"not a regular file or folder ({mode_name(mode)}), not opened")
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as error:
            if error.errno == errno.ELOOP:
                return None, (SKIP_SYMLINK_LOOP, "symlink loop (it leads back to itself), not followed")
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None, (SKIP_DANGLING, f"dangling symlink to {printable(os.readlink(entry.path))} (missing)")
            return None, (SKIP_UNREADABLE, f"cannot follow the symlink ({error.strerror})")
    except OSError as error:
        return None, (SKIP_UNREADABLE, f"cannot read ({error.strerror or error})")
    if stat.S_ISREG(mode):
        return "file", True
    if stat.S_ISDIR(mode):
        return "folder", True
    return None, (SKIP_NOT_A_FILE, f"symlink to a {mode_name(mode)}, not opened")


def _with_slash(entry, shown):
    """``shown`` with a "/" when the entry is a folder, as folders are listed."""
    try:
        return shown + "/" if entry.is_dir(follow_symlinks=False) else shown
    except OSError:
        return shown

def scan_pictures(images_dir, pokedex, exclude=None):
    """``(pictures, skipped)`` for a flat folder, a folder per Pokemon, or a mix of the two.

    Every entry ends up in one or the other. ``exclude`` is a folder path (``images_dir`` joined
    with the rest) listed as skipped and not read: the --out folder when it lies inside.
    ``pokedex`` is whatever names the pictures: the Pokedex, or ``captions.AnyNames`` (its
    ``what``, ``example`` and ``skip_kind`` word the skipped entries).
    """
    what = getattr(pokedex, "what", "Pokemon")
    example = getattr(pokedex, "example", "0025皮卡丘")
    skip_name = getattr(pokedex, "skip_kind", SKIP_NAME)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir} is not a folder; give --images the folder of pictures")
    try:
        # Plain strings and os.scandir: 4-5x faster than pathlib over a sprite set's ten thousand files.
        entries = sorted_entries(images_dir)
    except OSError as error:
        raise UserError(f"cannot list {images_dir} ({error.strerror or error}); check its permissions") from None
    images_real = os.path.realpath(images_dir)
    pictures, skipped = [], []
    for entry in entries:
        shown = printable(entry.name)
        if entry.name.startswith("."):
            skipped.append(skipped_entry(_with_slash(entry, shown), SKIP_HIDDEN, "name starts with '.', not read"))
            continue
        kind, detail = _entry_type(entry)
        if kind is None:
            skipped.append(skipped_entry(shown, *detail))
        elif kind == "folder":
            if entry.path == exclude:
                skipped.append(skipped_entry(shown + "/", SKIP_OUTPUT, "the --out folder, not read"))
                continue
            if detail and _leads_back(entry.path, images_real):
                skipped.append(skipped_entry(shown + "/", SKIP_SYMLINK_LOOP, "symlink to a folder holding --images, not followed"))
                continue
            if not is_utf8(entry.name):
                files = _count_files(entry.path)
                skipped.append(skipped_entry(shown + "/", SKIP_UNDECODABLE, f"folder name is not valid UTF-8 ({files} file(s) "
                                     f"not used); rename it like {example}"))
                continue
            try:
                number, name, _ = pokedex.parse_picture_name(entry.name, is_folder=True)
            except ValueError as error:
                files = _count_files(entry.path)
                skipped.append(skipped_entry(shown + "/", skip_name, f"folder name: {printable(str(error))} ({files} file(s) not used)"))
                continue
            _scan_pokemon_folder(entry.path, shown, number, name, pictures, skipped, exclude)
        elif not is_utf8(entry.name):
            skipped.append(skipped_entry(shown, SKIP_UNDECODABLE, f"file name is not valid UTF-8, so no {what} can be read "
                                 f"from it; rename it like {example}.png"))
        else:
            try:
                number, name, view = pokedex.parse_picture_name(entry.name)
            except ValueError as error:
                skipped.append(skipped_entry(shown, skip_name, printable(str(error))))
                continue
            pictures.append(Picture(entry.path, shown, number, name, printable(view)))
    return pictures, skipped


def _scan_pokemon_folder(folder, shown, number, name, pictures, skipped, exclude):
    """The pictures under one Pokemon's folder, at any depth; symlinked subfolders are not followed."""
    stack = [(folder, "")]  # (path, its place inside the Pokemon's folder: "" or "sub/")
    while stack:
        directory, inside = stack.pop()
        try:
            entries = sorted_entries(directory)
        except OSError as error:
            skipped.append(skipped_entry(f"{shown}/{inside}", SKIP_UNREADABLE,
                                 f"cannot list this folder ({error.strerror or error}); check its permissions"))
            continue
        if not entries:
            skipped.append(skipped_entry(f"{shown}/{inside}", SKIP_EMPTY_FOLDER, "empty folder, nothing to read"))
            continue
        subfolders = []
        for entry in entries:
            relative = inside + printable(entry.name)
            if entry.name.startswith("."):
                skipped.append(skipped_entry(_with_slash(entry, f"{shown}/{relative}"), SKIP_HIDDEN, "name starts with '.', not read"))
                continue
            kind, detail = _entry_type(entry)
            if kind is None:
                skipped.append(skipped_entry(f"{shown}/{relative}", *detail))
            elif kind == "file":
                view = os.path.splitext(relative)[0]
                pictures.append(Picture(entry.path, f"{shown}/{relative}", number, name, view))
            elif entry.path == exclude:
                skipped.append(skipped_entry(f"{shown}/{relative}/", SKIP_OUTPUT, "the --out folder, not read"))
            elif detail:
                # Only top-level folders are followed through a symlink: below, one could loop.
                skipped.append(skipped_entry(f"{shown}/{relative}/", SKIP_SYMLINKED_FOLDER,
                                     "symlink to a folder inside a Pokemon's folder, not followed"))
            else:
                subfolders.append((entry.path, relative + "/"))
        stack.extend(reversed(subfolders))


def _count_files(folder):
    """How many entries other than folders lie under ``folder`` (symlinks not followed, errors ignored)."""
    count, stack = 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as scan:
                for entry in scan:
                    try:
                        is_folder = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_folder = False
                    if is_folder:
                        stack.append(entry.path)
                    else:
                        count += 1
        except OSError:
            continue
    return count


def _leads_back(path, images_real):
    """Whether the folder at ``path`` is ``images_real`` or holds it (following it would loop)."""
    real = os.path.realpath(path)
    return os.path.commonpath([real, images_real]) == real

