"""`build-dataset`: a picture folder -> upstream Chinese-CLIP's dataset format.

Input, either layout (or both mixed), file and folder names parsed by ``Pokedex.parse_picture_name``:

    flat                     IMAGES/0001妙蛙种子.png, IMAGES/0025-皮卡丘.jpg, IMAGES/皮卡丘_2.png
    one folder per Pokemon   IMAGES/0025皮卡丘/front_00.png, IMAGES/0025皮卡丘/back_00.png, ...

Or any captions (``--any-names``: file and folder names are the captions; ``--manifest``: a CSV, TSV
or JSONL file of paths and captions): see captions.py. A caption group then stands for a Pokemon
below (its ``number``), and a picture may have several captions.

Every entry of the input is accounted for: it becomes a picture, or an entry in ``skipped`` with its
kind and reason. Names starting with "." (.DS_Store, ._x AppleDouble copies, .sprites.json) are not
read and are listed as hidden; so are symlink loops, dangling symlinks, FIFOs and devices (never
opened: a FIFO would block), folders that cannot be listed and empty folders. A symlink to a
picture is read; a symlinked folder is followed at the top level only, so a loop cannot recur. Names
that are not valid UTF-8 or hold control characters are shown escaped (``0025\\xff.png``); such a
flat file cannot be named a Pokemon and is skipped, one inside a Pokemon's folder is built.

Output, exactly upstream's format (``cn_clip/preprocess``, ``cn_clip.training.data.LMDBDataset``):
``{split}_imgs.tsv`` (image_id TAB urlsafe-base64 PNG), ``{split}_texts.jsonl`` ({"text_id", "text",
"image_ids"}), ``lmdb/{split}/imgs`` and ``lmdb/{split}/pairs``, for train, valid and test, plus
``dataset_info.json`` (names, image size, split counts, each image's source, what was skipped).

Splits (seeded, reproducible):
- ``view``: each Pokemon's pictures are shuffled with a generator seeded by (seed, number) and dealt
  to test, valid, train; each Pokemon keeps at least one training picture. Test pictures are unseen
  pictures of seen Pokemon. A Pokemon's split does not change when other Pokemon are added.
- ``animation``: each Pokemon's animations (a view less its frame number: ``shiny_00`` ...
  ``shiny_23`` are the animation ``shiny``, the shiny front) are dealt whole, seeded by (seed,
  number), to test, valid, train; each Pokemon keeps at least one animation for training. Test
  pictures are views never seen for that Pokemon (no frame of them is in train), while every Pokemon
  is still trained on.
- ``pokemon``: whole Pokemon (those found in the input) are dealt to the splits (test Pokemon are
  never seen in training).
- ``auto``: ``view`` when most Pokemon found have two or more pictures, else ``pokemon``.
Split sizes are ``fraction * count`` rounded at random (seeded), so they are right on average.
Identical pictures (same pixels after resizing) are kept once, the first in (number, path) order,
and the others are reported as duplicates, so no picture can appear in two splits. Image ids follow
the same order.

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
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from cn_clip_pokemon.dataset_format import check_templates, fill_template, read_dataset_info  # one template rule
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import (
    FILE,
    available_cores,
    carried_or_listed,
    clean_leftovers,
    flatten_layout,
    foreign_entries,
    holds_marker,
    is_utf8,
    keep_additions,
    mode_name,
    printable,
    replace_directory,
    sorted_entries,
    try_lock,
    write_failure,
)
from cn_clip_pokemon.workers import run_in_pool

SPLITS = ("train", "valid", "test")
SPLIT_BY = ("auto", "view", "animation", "pokemon")
INFO_FILE = "dataset_info.json"
INFO_FORMAT = 1
DEFAULT_IMAGE_SIZE = 224
IMAGE_SIZES = (8, 4096)  # stored picture sizes the builder takes, in pixels
INITIAL_MAP_SIZE = 32 << 20
MESSAGE_ENTRIES = 20  # skipped entries named in a one-line error; the command prints them all
CONTEXT_LENGTH = 52  # upstream's default --context-length, for the tokenizer report
GROUP_MEMORY = 64 << 20  # one Pokemon's encoded pictures held in memory before spilling to disk


class Picture(NamedTuple):
    """One picture found in the input; plain strings, as there may be very many of them."""

    source: str
    relative: str
    number: int
    name: str
    view: str
    # Every caption of the picture (--any-names, --manifest); () for a Pokemon, whose text is ``name``.
    captions: tuple = ()


# ---------------------------------------------------------------- finding the pictures

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


def _skip(file, kind, reason):
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
            skipped.append(_skip(_with_slash(entry, shown), SKIP_HIDDEN, "name starts with '.', not read"))
            continue
        kind, detail = _entry_type(entry)
        if kind is None:
            skipped.append(_skip(shown, *detail))
        elif kind == "folder":
            if entry.path == exclude:
                skipped.append(_skip(shown + "/", SKIP_OUTPUT, "the --out folder, not read"))
                continue
            if detail and _leads_back(entry.path, images_real):
                skipped.append(_skip(shown + "/", SKIP_SYMLINK_LOOP, "symlink to a folder holding --images, not followed"))
                continue
            if not is_utf8(entry.name):
                files = _count_files(entry.path)
                skipped.append(_skip(shown + "/", SKIP_UNDECODABLE, f"folder name is not valid UTF-8 ({files} file(s) "
                                     f"not used); rename it like {example}"))
                continue
            try:
                number, name, _ = pokedex.parse_picture_name(entry.name, is_folder=True)
            except ValueError as error:
                files = _count_files(entry.path)
                skipped.append(_skip(shown + "/", skip_name, f"folder name: {printable(str(error))} ({files} file(s) not used)"))
                continue
            _scan_pokemon_folder(entry.path, shown, number, name, pictures, skipped, exclude)
        elif not is_utf8(entry.name):
            skipped.append(_skip(shown, SKIP_UNDECODABLE, f"file name is not valid UTF-8, so no {what} can be read "
                                 f"from it; rename it like {example}.png"))
        else:
            try:
                number, name, view = pokedex.parse_picture_name(entry.name)
            except ValueError as error:
                skipped.append(_skip(shown, skip_name, printable(str(error))))
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
            skipped.append(_skip(f"{shown}/{inside}", SKIP_UNREADABLE,
                                 f"cannot list this folder ({error.strerror or error}); check its permissions"))
            continue
        if not entries:
            skipped.append(_skip(f"{shown}/{inside}", SKIP_EMPTY_FOLDER, "empty folder, nothing to read"))
            continue
        subfolders = []
        for entry in entries:
            relative = inside + printable(entry.name)
            if entry.name.startswith("."):
                skipped.append(_skip(_with_slash(entry, f"{shown}/{relative}"), SKIP_HIDDEN, "name starts with '.', not read"))
                continue
            kind, detail = _entry_type(entry)
            if kind is None:
                skipped.append(_skip(f"{shown}/{relative}", *detail))
            elif kind == "file":
                view = os.path.splitext(relative)[0]
                pictures.append(Picture(entry.path, f"{shown}/{relative}", number, name, view))
            elif entry.path == exclude:
                skipped.append(_skip(f"{shown}/{relative}/", SKIP_OUTPUT, "the --out folder, not read"))
            elif detail:
                # Only top-level folders are followed through a symlink: below, one could loop.
                skipped.append(_skip(f"{shown}/{relative}/", SKIP_SYMLINKED_FOLDER,
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


# ---------------------------------------------------------------- the work done per picture


# What a worker does to each picture, timed separately when the build is profiled.
WORKER_STAGES = ("open", "composite", "resize", "encode", "hash")


def process_picture(task):
    """Worker: open, composite on white, fit to a square, encode.

    ``task`` is ``(index, path, image_size, profiled)``; returns ``(index, base64, digest, error,
    timing)``. The base64 text comes back as ASCII bytes: the parent only copies it into files and
    LMDB, and bytes go there without another encoding pass per write. ``timing`` is None unless
    ``profiled``: then ``(pid, CPU seconds of this process when the picture started and when it
    ended, CPU seconds of each of WORKER_STAGES)``.
    """
    from cn_clip_pokemon.images import PictureError, encode_picture, fit_square, open_picture

    index, path, image_size, profiled = task
    clock = time.process_time
    marks = [clock()] if profiled else None
    try:
        image = open_picture(path, marks=marks)  # adds the end of decoding, before compositing
        if profiled:
            marks.append(clock())
        square = fit_square(image, image_size)
        if profiled:
            marks.append(clock())
        encoded = encode_picture(square).encode("ascii")
        if profiled:
            marks.append(clock())
        # Same pixels give the same PNG (same encoder, same settings) and different pixels a
        # different one, so the encoded text identifies the picture; it is 5x smaller to hash.
        digest = hashlib.sha1(encoded).digest()
        timing = None
        if profiled:
            marks.append(clock())
            timing = (os.getpid(), marks[0], marks[-1], *(end - start for start, end in zip(marks, marks[1:])))
        return index, encoded, digest, None, timing
    except PictureError as error:
        reason = str(error)
        prefix = f"{path}: "
        return index, None, None, reason[len(prefix):] if reason.startswith(prefix) else reason, None
    except Exception as error:  # one bad file must never stop the build; it is reported instead
        return index, None, None, f"cannot be opened ({type(error).__name__}: {error})", None


class _StageClock:
    """Lap timer of this thread's CPU (``time.thread_time``): ``lap(stage)`` charges the CPU used
    since the previous lap to ``stage``. Used when a build is profiled (``profile=``)."""

    def __init__(self):
        self.seconds = {}
        self.last = time.thread_time()

    def lap(self, stage):
        now = time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now


class _NoClock:
    """What the builder uses when nobody asked for a profile: laps cost one call."""

    seconds = {}

    def lap(self, stage):
        pass


class _WorkerCpu:
    """Sums the workers' CPU from the timings they send back: per stage, and the rest (receiving
    tasks, pickling and sending results: the transfer's worker side), and their start-up."""

    def __init__(self):
        self.stages = dict.fromkeys(WORKER_STAGES, 0.0)
        self.first, self.last = {}, {}

    def add(self, timing):
        pid, started, ended, *stage_seconds = timing
        for stage, seconds in zip(WORKER_STAGES, stage_seconds):
            self.stages[stage] += seconds
        self.first[pid] = min(self.first.get(pid, started), started)
        self.last[pid] = max(self.last.get(pid, ended), ended)

    def summary(self):
        busy = sum(self.last[pid] - self.first[pid] for pid in self.first)
        return {
            "processes": len(self.first),
            "stages": self.stages,
            "transfer": max(0.0, busy - sum(self.stages.values())),
            "startup": sum(self.first.values()),
        }


# ---------------------------------------------------------------- splits


def _deal_counts(count, valid_fraction, test_fraction, rng):
    """How many of ``count`` items go to valid and test (random rounding; one stays in train)."""

    def rounded(expected):
        whole = math.floor(expected)
        return whole + (1 if rng.random() < expected - whole else 0)

    n_valid, n_test = rounded(count * valid_fraction), rounded(count * test_fraction)
    while n_valid + n_test > count - 1 and (n_valid or n_test):
        if n_test >= n_valid and n_test:
            n_test -= 1
        else:
            n_valid -= 1
    return n_valid, n_test


def choose_split_by(pictures):
    per_pokemon = {}
    for picture in pictures:
        per_pokemon[picture.number] = per_pokemon.get(picture.number, 0) + 1
    return "view" if statistics.median(per_pokemon.values()) >= 2 else "pokemon"


def _dealt(position, n_valid, n_test):
    return "test" if position < n_test else "valid" if position < n_test + n_valid else "train"


def view_splits(pictures, valid_fraction, test_fraction, seed):
    """Splits for the pictures of one Pokemon (same order), dealt by view; see the module docstring."""
    rng = random.Random(f"{seed}:{pictures[0].number}")
    order = sorted(range(len(pictures)), key=lambda i: pictures[i].relative)
    rng.shuffle(order)
    n_valid, n_test = _deal_counts(len(order), valid_fraction, test_fraction, rng)
    splits = [None] * len(pictures)
    for position, index in enumerate(order):
        splits[index] = _dealt(position, n_valid, n_test)
    return splits


# A frame number at the end of a view: fetch-sprites names frames VIEW_00, VIEW_01, ...
_FRAME_NUMBER = re.compile(r"_\d+$")


def animation_of(view):
    """The animation a view belongs to: the view less its frame number (``back-shiny_03`` ->
    ``back-shiny``, ``sub/front_00`` -> ``sub/front``); a view without one is its own animation."""
    return _FRAME_NUMBER.sub("", view)


def animation_splits(pictures, valid_fraction, test_fraction, seed):
    """Splits for the pictures of one Pokemon (same order), whole animations dealt; see the module docstring."""
    rng = random.Random(f"{seed}:{pictures[0].number}:animation")
    animations = sorted({animation_of(picture.view) for picture in pictures})
    rng.shuffle(animations)
    n_valid, n_test = _deal_counts(len(animations), valid_fraction, test_fraction, rng)
    split_of = {animation: _dealt(position, n_valid, n_test) for position, animation in enumerate(animations)}
    return [split_of[animation_of(picture.view)] for picture in pictures]


def pokemon_splits(numbers, valid_fraction, test_fraction, seed):
    """``{number: split}``: whole Pokemon dealt to the splits."""
    rng = random.Random(seed)
    numbers = sorted(set(numbers))
    rng.shuffle(numbers)
    n_valid, n_test = _deal_counts(len(numbers), valid_fraction, test_fraction, rng)
    return {number: _dealt(position, n_valid, n_test) for position, number in enumerate(numbers)}


# ---------------------------------------------------------------- LMDB


def _lmdb_map_size(value_sizes, key_size=16):
    """Room for these small values: LMDB stores them inline in leaf pages (counted here as if
    those were only half full)."""
    return max(1 << 20, 2 * sum(size + key_size + 16 for size in value_sizes) + (4 << 20))


class _LmdbWriter:
    """Puts in batches; grows the map and retries if our size estimate ever falls short."""

    def __init__(self, path, map_size, batch_bytes=4 << 20, reopen_bytes=16 << 20):
        import lmdb

        self._lmdb = lmdb
        self.path = str(path)
        self.env = self._open(map_size)
        # A write transaction holds its dirty pages in memory: commit every few MiB, not every
        # N items, so memory does not depend on the picture size.
        self.batch_bytes = batch_bytes
        self.pending = []
        self.pending_bytes = 0
        # LMDB touches part of each value's pages through its memory map, and those pages stay
        # resident in this process; reopening now and then lets them go, so memory stays flat.
        self.reopen_bytes = reopen_bytes
        self.written_since_open = 0

    def _open(self, map_size):
        # bytes: a folder name that is not UTF-8 (through a symlinked --out) still opens
        return self._lmdb.open(os.fsencode(self.path), map_size=map_size, subdir=True, lock=False, sync=False)

    def put(self, key, value):
        self.pending.append((key, value))
        self.pending_bytes += len(key) + len(value)
        if self.pending_bytes >= self.batch_bytes:
            self.flush()

    def flush(self):
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                self.written_since_open += self.pending_bytes
                self.pending = []
                self.pending_bytes = 0
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        if self.written_since_open >= self.reopen_bytes:
            map_size = self.env.info()["map_size"]
            self.env.sync(True)
            self.env.close()
            self.env = self._open(map_size)
            self.written_since_open = 0

    def close(self):
        self.flush()
        self.env.sync(True)
        self.env.close()


class _ImageWriter:
    """Writes kept pictures to ``{split}_imgs.tsv`` and ``lmdb/{split}/imgs`` as they come.

    Pictures arrive grouped by Pokemon; a group is held (in memory up to ``GROUP_MEMORY``, then in a
    temporary file) until its last picture is in, then ``deal(group)`` gives each picture's split.
    Image ids run 0..N-1 over all splits. Each picture's dataset_info entry goes to a side file.
    """

    def __init__(self, folder, deal, clock=None):
        self.deal = deal
        self.clock = clock or _NoClock()
        self.writers, self.tsv_files = {}, {}
        for split in SPLITS:
            (folder / "lmdb" / split).mkdir(parents=True)
            # The map starts small and doubles when full, so it ends within 2x of the data.
            self.writers[split] = _LmdbWriter(folder / "lmdb" / split / "imgs", INITIAL_MAP_SIZE)
            self.tsv_files[split] = open(folder / f"{split}_imgs.tsv", "wb")
        self.fragment_path = folder / IMAGES_FRAGMENT
        self.fragment = open(self.fragment_path, "w", encoding="utf-8", errors="backslashreplace")
        self.folder = folder
        self.split_images = {split: {} for split in SPLITS}  # split -> number -> [image ids]
        self.names = {}  # number -> name, of the Pokemon with a kept picture
        self.captions = {}  # number -> {caption: None}, in first-seen order (a Pokemon: its name)
        self.caption_images = {split: {} for split in SPLITS}  # split -> (number, caption) -> [image ids]
        self.count = 0
        self.group, self.spool = [], None

    def add(self, picture, encoded):
        if self.group and picture.number != self.group[0].number:
            self._write_group()
        if self.spool is None:
            self.spool = tempfile.SpooledTemporaryFile(max_size=GROUP_MEMORY, dir=self.folder)
        self.group.append(picture)
        self.spool.write(encoded + b"\n")
        self.clock.lap("spool")

    def _write_group(self):
        clock = self.clock
        splits = self.deal(self.group)
        self.spool.seek(0)
        clock.lap("spool")
        for picture, split, line in zip(self.group, splits, self.spool):
            key = str(self.count).encode("ascii")
            clock.lap("spool")
            self.tsv_files[split].write(key + b"\t" + line)
            clock.lap("TSV write")
            self.writers[split].put(key, line[:-1])
            clock.lap("LMDB write")
            self.split_images[split].setdefault(picture.number, []).append(self.count)
            self.names[picture.number] = picture.name
            known = self.captions.setdefault(picture.number, {})
            for caption in picture.captions or (picture.name,):
                known[caption] = None
                self.caption_images[split].setdefault((picture.number, caption), []).append(self.count)
            entry = {"split": split, "number": picture.number, "name": picture.name,
                     "source": picture.relative, "view": picture.view}
            if picture.captions:
                entry["captions"] = list(picture.captions)
            self.fragment.write(("" if self.count == 0 else ",\n") + f'  "{self.count}": '
                                + json.dumps(entry, ensure_ascii=False))
            self.count += 1
            clock.lap("info")
        self.spool.close()
        self.group, self.spool = [], None
        clock.lap("spool")

    def finish(self):
        """Write the last Pokemon's pictures and each split's image count."""
        if self.group:
            self._write_group()
        for split in SPLITS:
            count = sum(len(ids) for ids in self.split_images[split].values())
            self.writers[split].put(b"num_images", str(count).encode("utf-8"))

    def close(self):
        for split in SPLITS:
            self.writers[split].close()
            self.clock.lap("LMDB write")
            self.tsv_files[split].close()
            self.clock.lap("TSV write")
        self.fragment.close()
        if self.spool is not None:
            self.spool.close()


# ---------------------------------------------------------------- the output folder

# Exactly what build-dataset writes in --out: a rebuild replaces these and keeps anything else,
# carried into the new folder (files.py's rule: a command deletes only what its listing and its
# marker, here dataset_info.json, prove it wrote). A dict is a folder and what it may hold.
LMDB_FOLDER = "lmdb"
IMAGES_FRAGMENT = "images.json.part"  # only in the temporary folder, while the build runs
OUTPUT_LAYOUT = {
    **{f"{split}_{kind}": FILE for split in SPLITS for kind in ("imgs.tsv", "texts.jsonl")},
    INFO_FILE: FILE,
    # lock.mdb is LMDB's own, made by a reader that opens the database with locking on.
    LMDB_FOLDER: {split: {database: {"data.mdb": FILE, "lock.mdb": FILE} for database in ("imgs", "pairs")}
                  for split in SPLITS},
}
OUTPUT_NAMES = frozenset(OUTPUT_LAYOUT)
OUTPUT_LISTING = flatten_layout(OUTPUT_LAYOUT)
TEMP_LISTING = flatten_layout({**OUTPUT_LAYOUT, IMAGES_FRAGMENT: FILE})
# The start of every dataset_info.json this builder has written (json.dumps, indent=1, format first).
INFO_HEAD = b'{\n "format": '


def _holds_our_info(folder):
    return holds_marker(folder, INFO_FILE, INFO_HEAD)


def _is_our_dataset(folder):
    """A real folder with build-dataset's dataset_info.json, nothing of another kind under a name the
    build writes; other entries (upstream's feature files, the user's notes) may sit beside them."""
    try:
        return (os.path.isdir(folder) and not os.path.islink(folder) and _first_clash(folder) is None
                and _holds_our_info(folder))
    except OSError:
        return False


def _first_clash(folder):
    """The first entry under ``folder`` that the build did not write but that takes a name it writes
    (a folder where a file goes, say), or None. Any other entry is kept by a rebuild."""
    return next((path for path in foreign_entries(folder, OUTPUT_LISTING) if path.rstrip("/") in OUTPUT_LISTING), None)


def _check_output(out_dir, images_dir):
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
    notes = _clean_leftovers(target)
    our_info = False
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{shown} is a file; give --out a folder")
        try:
            clash = _first_clash(target)
            our_info = _holds_our_info(target)
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


def _clean_leftovers(target):
    """Undo what interrupted builds of ``target`` left beside it (files.clean_leftovers: the previous
    dataset put back, killed builds' temporary folders removed, only when they hold nothing but what
    build-dataset writes); returns one line per thing done."""
    return clean_leftovers(
        target, "build-dataset",
        # what a killed swap left holds the build's files, and the kept ones as hard links of target's
        owns_old=lambda inside: carried_or_listed(inside, OUTPUT_LISTING, target),
        owns_temporary=lambda temp: carried_or_listed(temp, TEMP_LISTING, target),
        complete=_is_our_dataset,
    )



# ---------------------------------------------------------------- the build


def build_dataset(
    images_dir,
    out_dir,
    *,
    image_size=DEFAULT_IMAGE_SIZE,
    split_by="auto",
    valid_fraction=0.1,
    test_fraction=0.1,
    seed=0,
    templates=None,
    strict=False,
    workers=None,
    progress=True,
    pokedex=None,
    any_names=False,
    manifest=None,
    t2s=True,
    profile=False,
):
    """Build the dataset of ``images_dir`` into ``out_dir`` (atomically); returns a summary dict.

    The summary holds the ``dataset_info.json`` fields plus ``out_dir``, ``seconds``, ``workers``,
    ``pictures_per_second`` and ``names_with_unknown_tokens``. With ``profile``, also ``profile``:
    where the CPU went (seconds of this process per stage, of its pool threads, and of the workers
    per stage; see bench/bench_builder.py), at the price of a few clock reads per picture.

    Any captions (see captions.py): ``any_names`` takes file and folder names as captions, without
    the Pokedex; ``manifest`` (with ``images_dir`` None) reads picture-caption rows from a CSV, TSV
    or JSONL file. Captions are converted to simplified Chinese unless ``t2s`` is False.
    """
    from cn_clip_pokemon.captions import AnyNames, all_captions, number_groups, read_manifest
    from cn_clip_pokemon.pokedex import Pokedex
    from cn_clip_pokemon.progress import progress_bar

    started = time.perf_counter()
    clock = _StageClock() if profile else _NoClock()
    if manifest is not None and (images_dir is not None or any_names):
        raise UserError("give either --manifest or --images (with or without --any-names), not both")
    if manifest is None and images_dir is None:
        raise UserError("give --images (a picture folder) or --manifest (a CSV, TSV or JSONL file)")
    naming = "manifest" if manifest is not None else "any-names" if any_names else "pokedex"
    if naming == "pokedex" and not t2s:
        raise UserError("--no-t2s keeps captions as they are, with --any-names or --manifest; "
                        "Pokedex names are always simplified")
    if split_by not in SPLIT_BY:
        raise UserError(f"split_by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise UserError("valid and test fractions must each be in [0, 1) and add up to less than 1")
    if not IMAGE_SIZES[0] <= int(image_size) <= IMAGE_SIZES[1]:
        raise UserError(f"image size {image_size} is out of range ({IMAGE_SIZES[0]}-{IMAGE_SIZES[1]} pixels)")
    image_size = int(image_size)
    templates = check_templates(templates)
    for template in templates:
        if not is_utf8(template):  # a command-line argument's undecodable bytes
            raise UserError(f"template {printable(template)} is not valid UTF-8; write it in UTF-8, e.g. 一张{{}}的图片")
    pokedex = pokedex or Pokedex.load()
    workers = max(1, int(workers)) if workers else available_cores()

    if not is_utf8(str(out_dir)):
        raise UserError(f"--out {printable(str(out_dir))} is not valid UTF-8, and training opens the dataset by a "
                        "UTF-8 path: choose a folder name in UTF-8")
    # --images, or the manifest's folder: it must not lie inside --out.
    images_dir = Path(images_dir) if manifest is None else Path(manifest).parent
    source_shown = printable(str(manifest if manifest is not None else images_dir))
    # The output is checked (and an interrupted build's leftovers undone) before any picture is read.
    target, exclude, cleaned, rebuild = _check_output(out_dir, images_dir)
    if naming == "manifest":
        pictures, skipped = read_manifest(manifest, t2s=t2s, out_dir=target)
    else:
        pictures, skipped = scan_pictures(images_dir, AnyNames(t2s) if any_names else pokedex, exclude=exclude)
    # --strict stops at bad entries; hidden files and the --out folder are not meant as pictures.
    bad = [entry for entry in skipped if entry["kind"] not in (SKIP_HIDDEN, SKIP_OUTPUT)]
    if strict and bad:
        where = printable(str(images_dir))
        raise UserError(f"{where}/{bad[0]['file']}: {bad[0]['reason']} (--strict)")
    if not pictures:
        raise NothingToBuild(f"no pictures found in {source_shown}", skipped, naming)

    if naming == "pokedex":
        # Names the model could never tell apart are refused before any work is done.
        names = sorted({(picture.number, picture.name) for picture in pictures})
        report = pokedex.tokenizer_report([name for _, name in names], templates)
        if report["identical"]:
            groups = "; ".join(" = ".join(group) for group in report["identical"])
            raise UserError(f"these names tokenize identically, so the model cannot tell them apart: {groups}")
    else:
        # Captions the model cannot tell apart are one text to it: they join one group (never in
        # one batch, dealt to one split) and are listed, not refused.
        report = pokedex.tokenizer_report(all_captions(pictures), templates)
        pictures = number_groups(pictures, report["identical"])

    # A Pokemon's pictures go through the workers one after another, so its view split can be dealt
    # as soon as its last picture is in, and each picture written to its split's TSV and LMDB in the
    # same pass, with no second pass over the whole set. Splits depend only on file names (and, by view, on which
    # of a Pokemon's pictures made it through), never on other Pokemon.
    pictures.sort(key=lambda picture: (picture.number, picture.relative))
    if split_by == "auto":
        split_by = choose_split_by(pictures)
    if split_by == "view":
        def deal(group):
            return view_splits(group, valid_fraction, test_fraction, seed)
    elif split_by == "animation":
        def deal(group):
            return animation_splits(group, valid_fraction, test_fraction, seed)
    else:
        split_of = pokemon_splits([picture.number for picture in pictures], valid_fraction, test_fraction, seed)

        def deal(group):
            return [split_of[group[0].number]] * len(group)

    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    lock = try_lock(temp)  # tells a concurrent build's clean-up that this folder is in use
    clock.lap("start, scan and names")
    wall = {"start, scan and names": time.perf_counter() - started}
    try:
        images = _ImageWriter(temp, deal, clock)
        worker_cpu = _WorkerCpu()
        pool_started, process_cpu_started = time.perf_counter(), time.process_time()
        thread_cpu_started = time.thread_time()
        try:
            first_seen = {}
            tasks = ((index, picture.source, image_size, profile) for index, picture in enumerate(pictures))
            bar = progress_bar(total=len(pictures), unit="picture", description="build-dataset", enabled=progress)
            with bar:
                for index, encoded, digest, error, timing in run_in_pool(process_picture, tasks, min(workers, len(pictures))):
                    clock.lap("transfer: parent, waiting for results")
                    if timing is not None:
                        worker_cpu.add(timing)
                    bar.update(1)
                    picture = pictures[index]
                    kind = SKIP_BAD_PICTURE
                    if error is None and digest in first_seen:
                        kind, error = SKIP_DUPLICATE, f"same picture as {pictures[first_seen[digest]].relative} (duplicate)"
                    if error is not None:
                        error = printable(error)
                        if strict:
                            raise UserError(f"{printable(picture.source)}: {error} (--strict)")
                        skipped.append(_skip(picture.relative, kind, error))
                        continue
                    first_seen[digest] = index
                    clock.lap("duplicates and progress")
                    images.add(picture, encoded)
            del first_seen
            images.finish()
        finally:
            images.close()
        # the pool's own threads in this process: feeding tasks, receiving and unpickling results
        pool_threads_cpu = (time.process_time() - process_cpu_started) - (time.thread_time() - thread_cpu_started)
        wall["pictures (workers, transfer, TSV, LMDB)"] = time.perf_counter() - pool_started
        if not images.count:
            raise NothingToBuild(f"none of the {len(pictures)} pictures in {source_shown} could be used", skipped, naming)
        split_images = images.split_images
        images_fragment = images.fragment_path
        names = sorted(images.names.items())

        # Texts: one text per (name or caption, template); text ids are shared by all splits.
        numbers_in_order = [number for number, _ in names]
        captions_of = {number: list(images.captions[number]) for number in numbers_in_order}
        caption_images = images.caption_images
        text_ids = {}
        for number in numbers_in_order:
            for caption in captions_of[number]:
                for template in templates:
                    text_ids.setdefault(fill_template(template, caption), len(text_ids))
        longest_text = max(len(text.encode("utf-8")) for text in text_ids)
        split_counts = {}
        for split in SPLITS:
            images_in_split = sum(len(ids) for ids in split_images[split].values())
            pair_count = sum(len(ids) for ids in caption_images[split].values()) * len(templates)
            # Pairs in the order upstream's build_lmdb_dataset.py writes them from the JSONL.
            writer = _LmdbWriter(
                temp / "lmdb" / split / "pairs", _lmdb_map_size([64 + longest_text] * pair_count)
            )
            position = texts = 0
            with open(temp / f"{split}_texts.jsonl", "w", encoding="utf-8") as jsonl:
                for number in numbers_in_order:
                    for caption in captions_of[number]:
                        image_ids = caption_images[split].get((number, caption))
                        if not image_ids:
                            continue
                        for template in templates:
                            text = fill_template(template, caption)
                            record = {"text_id": text_ids[text], "text": text, "image_ids": image_ids}
                            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
                            texts += 1
                            for image_id in image_ids:
                                writer.put(str(position).encode("utf-8"), pickle.dumps((image_id, text_ids[text], text)))
                                position += 1
            writer.put(b"num_samples", str(position).encode("utf-8"))
            writer.close()
            split_counts[split] = {
                "images": images_in_split,
                "pairs": position,
                "texts": texts,
            }

        info = {
            "format": INFO_FORMAT,
            # every Pokemon's name, or every caption (grouped; "number" of a picture is its group)
            "names": [caption for number in numbers_in_order for caption in captions_of[number]],
            "naming": naming,
            "groups": len(numbers_in_order),
            "image_size": image_size,
            "splits": split_counts,
            "images": None,  # written from images_fragment
            "skipped": skipped,
            "split_by": split_by,
            "seed": seed,
            "templates": templates,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
            "names_with_unknown_tokens": report["unknown"],
            "longest_text_tokens": report["longest_tokens"],
            "texts_over_context_length": report["texts_over_context_length"],
            "captions_tokenizing_identically": report["identical"] if naming != "pokedex" else [],
            "counts": count_entries(images.count, skipped),
        }
        clock.lap("texts and pairs")
        _write_info(temp / INFO_FILE, info, images_fragment)
        images_fragment.unlink()
        clock.lap("info")
        # What the build did not write in the old dataset (upstream's extract_features writes
        # {split}_imgs.img_feat.jsonl and {split}_texts.txt_feat.jsonl there, its predictions may go
        # there too) moves into the new one, as hard links, before the swap.
        kept = keep_additions(target, temp, OUTPUT_LISTING, OUTPUT_LISTING, "build-dataset", "dataset") \
            if rebuild else []
        replace_directory(temp, target)
        clock.lap("rename")
        wall["texts, pairs, info, rename"] = time.perf_counter() - started - sum(wall.values())
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        import lmdb

        if isinstance(error, (OSError, lmdb.Error)):  # the disk filled up, the folder went read-only...
            kept = f"the previous dataset in {printable(str(out_dir))} is as it was" if _is_our_dataset(target) else None
            raise write_failure(error, target.parent, kept) from None
        raise
    finally:
        if lock is not None:
            os.close(lock)

    seconds = time.perf_counter() - started
    summary = {key: value for key, value in info.items() if key != "images"}
    summary.update(
        out_dir=str(out_dir),
        cleaned=cleaned,
        kept=kept,  # what was in --out that the build did not write, kept in the new dataset
        seconds=seconds,
        workers=workers,
        pictures=len(pictures),
        pictures_per_second=len(pictures) / seconds if seconds else 0.0,
    )
    if naming != "pokedex":
        # captions of the test split that no training picture has (a flat folder: one picture each)
        trained = {caption for _, caption in images.caption_images["train"]}
        tested = {caption for _, caption in images.caption_images["test"]}
        summary["test_captions"] = len(tested)
        summary["test_captions_unseen_in_training"] = len(tested - trained)
    if profile:
        summary["profile"] = {
            "parent": clock.seconds,  # this process's main thread, CPU seconds per stage
            "pool_threads": pool_threads_cpu,
            "parent_process": time.process_time(),  # all of this process's CPU so far, start-up included
            "workers": worker_cpu.summary() if workers > 1 else None,  # one process: stages run in this one
            "wall": wall,
        }
        if workers <= 1:  # no pool: the stages ran in the main thread, inside the "waiting" lap
            summary["profile"]["in_process_stages"] = worker_cpu.summary()["stages"]
    return summary


def count_entries(built, skipped):
    """What became of the input: pictures built, entries skipped, and how many of each kind."""
    by_kind = {}
    for entry in skipped:
        by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + 1
    return {"built": built, "skipped": len(skipped), "skipped_by_kind": dict(sorted(by_kind.items()))}


class NothingToBuild(UserError):
    """No input entry could be used; ``skipped`` lists every one with its reason."""

    def __init__(self, start, skipped, naming="pokedex"):
        self.skipped = skipped
        if skipped:
            kinds = ", ".join(f"{count} {kind}" for kind, count in count_entries(0, skipped)["skipped_by_kind"].items())
            listed = "; ".join(f"{entry['file']} ({entry['reason']})" for entry in skipped[:MESSAGE_ENTRIES])
            more = f"; and {len(skipped) - MESSAGE_ENTRIES} more" if len(skipped) > MESSAGE_ENTRIES else ""
            detail = f"; all {len(skipped)} entries skipped ({kinds}): {listed}{more}"
        else:
            detail = " (the folder is empty)"
        hint = {
            "pokedex": "Name pictures like 0025皮卡丘.png, or put them in folders named like 0025皮卡丘/; for "
                       "captions that are not Pokemon names, use --any-names (the file or folder name is the caption) "
                       "or --manifest FILE (a CSV, TSV or JSONL of paths and captions)",
            "any-names": "Name pictures by their caption (红色圆形.png), or put them in folders named by it (红色圆形/)",
            "manifest": "Give each row a picture's path (relative to the manifest) and a caption",
        }[naming]
        super().__init__(f"{start}{detail}. {hint}")


def _write_info(path, info, images_fragment):
    """dataset_info.json with its "images" object copied from a file, so it is never all in memory."""
    head = json.dumps(info, ensure_ascii=False, indent=1)
    marker = '"images": null'
    before, after = head.split(marker, 1)
    # Every text in it went through printable(); backslashreplace is the guard that keeps the file
    # valid UTF-8 (and valid JSON: a stray surrogate becomes a \u escape) whatever slips through.
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as out, \
            open(images_fragment, encoding="utf-8") as fragment:
        out.write(before + '"images": {\n')
        shutil.copyfileobj(fragment, out)
        out.write("\n }" + after)


def load_dataset_info(dataset_dir):
    """The ``dataset_info.json`` of a built dataset, with a clear error when it is not one."""
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise UserError(f"{dataset_dir} has no {INFO_FILE}: build it with `cn-clip-pokemon build-dataset`")
    return read_dataset_info(path)


def _split_by_shown(summary):
    """How the summary names the split: a caption dataset's groups stand where Pokemon would."""
    if summary.get("naming", "pokedex") != "pokedex" and summary["split_by"] == "pokemon":
        return "caption"
    return summary["split_by"]


def print_summary(summary, file=None):
    file = file or sys.stdout
    splits = summary["splits"]
    for note in summary.get("cleaned", ()):
        print(f"note: {note}", file=file)
    if summary.get("naming", "pokedex") == "pokedex":
        what = f"{len(summary['names'])} Pokemon"
    else:
        what = f"{len(summary['names'])} captions in {summary['groups']} groups"
    print(
        f"built {printable(summary['out_dir'])}: {what}, "
        + ", ".join(f"{split} {splits[split]['images']} pictures/{splits[split]['pairs']} pairs" for split in SPLITS)
        + f"; {summary['image_size']} px, split by {_split_by_shown(summary)} (seed {summary['seed']}), "
        f"{summary['seconds']:.1f} s ({summary['pictures_per_second']:.0f} pictures/s, "
        f"{summary['workers']} process{'es' if summary['workers'] != 1 else ''})",
        file=file,
    )
    if summary.get("kept"):
        shown = ", ".join(printable(path) for path in summary["kept"][:MESSAGE_ENTRIES])
        more = f" and {len(summary['kept']) - MESSAGE_ENTRIES} more" if len(summary["kept"]) > MESSAGE_ENTRIES else ""
        print(f"kept {len(summary['kept'])} entries build-dataset did not write: {shown}{more}", file=file)
    for split in SPLITS:
        if splits[split]["images"] == 0:
            print(
                f"warning: the {split} split is empty: "
                + ("training has nothing to learn from" if split == "train" else f"nothing to {'validate' if split == 'valid' else 'test'} on")
                + "; add pictures, or change --valid-fraction/--test-fraction",
                file=file,
            )
    if summary.get("test_captions_unseen_in_training"):
        print(
            f"warning: {summary['test_captions_unseen_in_training']} of {summary['test_captions']} test captions never "
            "occur in training (each caption's pictures lie in one split), so the test split measures captions the "
            "model never saw; to test new pictures of trained captions, give each caption several pictures (a folder "
            "per caption with --any-names, or several --manifest rows) and --split-by view",
            file=file,
        )
    if summary["names_with_unknown_tokens"]:
        listed = ", ".join(f"{name} ({' '.join(tokens)})" for name, tokens in summary["names_with_unknown_tokens"].items())
        print(f"note: characters missing from Chinese-CLIP's vocabulary become [UNK] in: {listed}", file=file)
    if summary.get("texts_over_context_length"):
        print(f"note: {summary['texts_over_context_length']} texts are longer than upstream's default context length "
              f"{CONTEXT_LENGTH} tokens (the longest {summary['longest_text_tokens']}); training cuts them at "
              "--context-length", file=file)
    if summary.get("captions_tokenizing_identically"):
        listed = "; ".join(" = ".join(group) for group in summary["captions_tokenizing_identically"][:MESSAGE_ENTRIES])
        print(f"note: these captions tokenize identically, so each set is one group (never in one batch): {listed}",
              file=file)
    counts = summary["counts"]
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts["skipped_by_kind"].items())
    print(f"every input entry accounted for: {counts['built']} pictures built, {counts['skipped']} skipped"
          + (f" ({kinds})" if kinds else ""), file=file)
    if summary["skipped"]:
        _print_skipped(summary["skipped"], file, limit=50)
        if len(summary["skipped"]) > 50:
            print(f"  ... and {len(summary['skipped']) - 50} more (all listed in {INFO_FILE})", file=file)


def _print_skipped(skipped, file, limit=None):
    print(f"skipped {len(skipped)} entries:", file=file)
    for entry in skipped[:limit]:
        print(f"  {entry['file']}: {entry['reason']}", file=file)


# ---------------------------------------------------------------- the command


def build_dataset_arguments(parser):
    from cn_clip_pokemon.arguments import fraction, positive_int, prompt_template, whole_number_between

    parser.description = (
        "Build upstream Chinese-CLIP's dataset (TSV, JSONL and LMDB for train/valid/test) from a "
        "folder of pictures named like 0025皮卡丘.png, or one folder per Pokemon (0025皮卡丘/*.png); "
        "or, with any captions, from pictures named by their caption (--any-names) or a CSV/TSV/JSONL "
        "manifest of picture paths and captions (--manifest). Every entry is built or listed with the reason it was skipped (--strict stops instead). The build "
        "is atomic: a failed or killed run leaves the previous dataset as it was, and the next run removes "
        "what it left behind."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="the picture folder")
    source.add_argument(
        "--manifest", type=Path, metavar="FILE",
        help="instead of --images: a .csv, .tsv (tab, no quoting) or .jsonl file of pictures and captions, with columns "
        "path and caption (or open_clip's filepath and title; a CSV/TSV's first line names them); paths are relative "
        "to the manifest's folder; several rows with one path give a picture several captions, and so does a JSONL "
        "caption list. Bad rows are skipped with MANIFEST:LINE and the reason",
    )
    parser.add_argument(
        "--any-names", action="store_true",
        help="with --images: each file's name without its extension (红色圆形.png), or its folder's name "
        "(红色圆形/1.png), is the caption as it is; no Pokedex, no number needed (0001红色圆形.png is "
        "\"0001红色圆形\"); put several pictures of one caption in a folder",
    )
    parser.add_argument(
        "--no-t2s", action="store_true",
        help="keep --any-names/--manifest captions as written (default: traditional Chinese becomes simplified, "
        "like Pokemon names)",
    )
    parser.add_argument(
        "--out", type=dataset_folder, required=True,
        help="the dataset folder, e.g. ${DATAPATH}/datasets/pokemon: new, empty, or a dataset built here, whose "
        "files the build replaces; what else is in it (upstream's *_feat.jsonl from extract_features, predictions, "
        "your notes) is kept, unless it takes a name the build writes (then it is refused). A folder without "
        "build-dataset's dataset_info.json is refused; a symlink is followed and stays a link",
    )
    parser.add_argument("--image-size", type=whole_number_between(*IMAGE_SIZES), default=DEFAULT_IMAGE_SIZE, help="stored picture size in pixels (square, white padding; default 224)")
    parser.add_argument(
        "--split-by", choices=SPLIT_BY, default="auto",
        help="view: unseen pictures of seen Pokemon in valid/test; animation: whole animations (a view such as "
        "the shiny back: VIEW_00, VIEW_01, ...) in valid/test, so test pictures are views never seen for that "
        "Pokemon, and every Pokemon keeps one in train; pokemon: unseen Pokemon; auto (default): view when most Pokemon have 2+ pictures. With any captions, a caption group "
        "(pictures sharing captions) stands for a Pokemon",
    )
    parser.add_argument("--valid-fraction", type=fraction, default=0.1, help="share of pictures (or Pokemon) for valid (default 0.1)")
    parser.add_argument("--test-fraction", type=fraction, default=0.1, help="share of pictures (or Pokemon) for test (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--template", dest="templates", action="append", default=None, metavar="TEXT", type=prompt_template,
        help="prompt template with {} for the name, e.g. 一张{}的图片 (repeatable; default: the bare name)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: every available core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def dataset_folder(text):
    """An argparse type: a dataset folder's path, in UTF-8 (upstream's LMDB reader opens it as UTF-8 text)."""
    import argparse

    if not is_utf8(text):
        raise argparse.ArgumentTypeError(
            f"{printable(text)} is not valid UTF-8, and training opens the dataset by a UTF-8 path: "
            "choose a folder name in UTF-8"
        )
    return Path(text)


def build_dataset_command(args):
    from cn_clip_pokemon.arguments import UsageError

    if args.any_names and args.manifest is not None:
        raise UsageError("--any-names goes with --images; a --manifest names its captions itself")
    if args.no_t2s and not (args.any_names or args.manifest is not None):
        raise UsageError("--no-t2s keeps captions as written, with --any-names or --manifest; "
                         "Pokedex names are always simplified")
    if args.valid_fraction + args.test_fraction >= 1:
        raise UsageError(
            f"--valid-fraction {args.valid_fraction} and --test-fraction {args.test_fraction} add up to 1 or more: "
            "train would get no picture; give smaller shares (0.1 each by default)"
        )
    try:
        summary = _build_from_args(args)
    except NothingToBuild as error:
        # The one-line error names the first few; here every one is named, above it.
        _print_skipped(error.skipped, sys.stderr)
        raise
    print_summary(summary)
    return 0


def _build_from_args(args):
    return build_dataset(
        args.images,
        args.out,
        image_size=args.image_size,
        split_by=args.split_by,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        templates=args.templates,
        strict=args.strict,
        workers=args.workers,
        progress=not args.no_progress,
        any_names=args.any_names,
        manifest=args.manifest,
        t2s=not args.no_t2s,
    )
