"""The build's output folder: what it may replace, and what interrupted builds left beside it.

The build runs in a temporary folder beside the output (``.NAME.tmp-*``, locked while the build
runs) and is swapped into place at the end with one atomic rename-exchange (Linux ``renameat2``),
so at every instant ``--out`` holds a complete dataset, the old or the new one. Elsewhere the old
dataset is first moved aside to ``.NAME.old-*``; if a build is killed between the two renames, the
next build puts it back. Each build starts by removing the leftovers of interrupted builds that it
recognises (its own temporary folders, holding only files it writes).

The builder owns only what it writes: ``--out`` must be empty, new, or a dataset of ours (with its
``dataset_info.json``), and ``--images`` may not lie inside it. A rebuild replaces the files it
writes and keeps everything else there (upstream's ``extract_features`` writes its
``*_feat.jsonl`` into the dataset folder): those entries are hard-linked into the new dataset before
the swap; one that takes a name the build writes is refused. A symlinked ``--out`` stays a symlink:
the dataset is built at its target.
"""
import errno
import os
from pathlib import Path

from cn_clip_pokemon.builder.writers import IMAGES_FRAGMENT
from cn_clip_pokemon.dataset_format import INFO_FILE, LMDB_DATABASES, LMDB_FOLDER, SPLITS, images_tsv, texts_jsonl
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.owned_files import (
    FILE,
    carried_or_listed,
    clean_leftovers,
    flatten_layout,
    foreign_entries,
    holds_marker,
)
from cn_clip_pokemon.safe_reading import printable

# Exactly what build-dataset writes in --out: a rebuild replaces these and keeps anything else,
# carried into the new folder (owned_files.py's rule: a command deletes only what its listing and its
# marker, here dataset_info.json, prove it wrote). A dict is a folder and what it may hold.
OUTPUT_LAYOUT = {
    **{file_of("", split).name: FILE for split in SPLITS for file_of in (images_tsv, texts_jsonl)},
    INFO_FILE: FILE,
    # lock.mdb is LMDB's own, made by a reader that opens the database with locking on.
    LMDB_FOLDER: {split: {database: {"data.mdb": FILE, "lock.mdb": FILE} for database in LMDB_DATABASES}
                  for split in SPLITS},
}
OUTPUT_NAMES = frozenset(OUTPUT_LAYOUT)
OUTPUT_LISTING = flatten_layout(OUTPUT_LAYOUT)
TEMP_LISTING = flatten_layout({**OUTPUT_LAYOUT, IMAGES_FRAGMENT: FILE})
# The start of every dataset_info.json this builder has written (json.dumps, indent=1, format first).
INFO_HEAD = b'{\n "format": '


def holds_our_info(folder):
    return holds_marker(folder, INFO_FILE, INFO_HEAD)


def is_our_dataset(folder):
    """A real folder with build-dataset's dataset_info.json, nothing of another kind under a name the
    build writes; other entries (upstream's feature files, the user's notes) may sit beside them."""
    try:
        return (os.path.isdir(folder) and not os.path.islink(folder) and _first_clash(folder) is None
                and holds_our_info(folder))
    except OSError:
        return False


def _first_clash(folder):
    """The first entry under ``folder`` that the build did not write but that takes a name it writes
    (a folder where a file goes, say), or None. Any other entry is kept by a rebuild."""
    return next((path for path in foreign_entries(folder, OUTPUT_LISTING) if path.rstrip("/") in OUTPUT_LISTING), None)


def check_output(out_dir, images_dir):
    """``(target, exclude, notes, ours)``: the real folder to build into, checked, after undoing leftovers.

    A symlinked --out is followed, so the link stays and the dataset appears at its target.
    ``exclude`` is the --out folder's path under --images when it lies there (else None); ``notes``
    say what was cleaned up; ``ours`` whether ``target`` holds build-dataset's dataset_info.json.
    """
    out_dir = Path(out_dir)
    shown = printable(str(out_dir))
    if os.path.islink(out_dir):
        try:
            os.stat(out_dir)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UserError(f"--out {shown} is a symlink loop; point it at a folder, or give another --out") from None
    target = Path(os.path.realpath(out_dir))
    images_real = os.path.realpath(images_dir)
    if os.path.commonpath([images_real, str(target)]) == str(target):
        raise UserError(
            f"--images {printable(str(images_dir))} lies inside --out {shown}, and a build replaces all of {shown}: "
            "move the pictures out of it, or choose another --out"
        )
    notes = clean_build_leftovers(target)
    our_info = False
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{shown} is a file; give --out a folder")
        try:
            clash = _first_clash(target)
            our_info = holds_our_info(target)
            empty = not any(target.iterdir())
        except OSError as error:
            raise UserError(f"cannot look inside --out {shown} ({error.strerror or error}); check its permissions") from None
        if not empty and not our_info:
            raise UserError(
                f"{shown} is not empty and holds no {INFO_FILE} of build-dataset, so it is not a dataset this command "
                "built: choose an empty or new --out"
            )
        if clash is not None:
            raise UserError(
                f"{shown} holds {printable(clash)}, which build-dataset did not write, under a name the build writes: "
                f"move {printable(clash)} out of it, or choose an empty or new --out"
            )
    exclude = None
    if os.path.commonpath([images_real, str(target)]) == images_real:
        exclude = os.path.join(str(images_dir), os.path.relpath(target, images_real))
    return target, exclude, notes, our_info


def clean_build_leftovers(target):
    """Undo what interrupted builds of ``target`` left beside it (owned_files.clean_leftovers: the previous
    dataset put back, killed builds' temporary folders removed, only when they hold nothing but what
    build-dataset writes); returns one line per thing done."""
    return clean_leftovers(
        target, "build-dataset",
        # what a killed swap left holds the build's files, and the kept ones as hard links of target's
        owns_old=lambda inside: carried_or_listed(inside, OUTPUT_LISTING, target),
        owns_temporary=lambda temp: carried_or_listed(temp, TEMP_LISTING, target),
        complete=is_our_dataset,
    )
