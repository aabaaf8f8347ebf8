"""`build-dataset`: a picture folder -> upstream Chinese-CLIP's dataset format.

Input, either layout (or both mixed), file and folder names parsed by ``Pokedex.parse_picture_name``:

    flat                     IMAGES/0001妙蛙种子.png, IMAGES/0025-皮卡丘.jpg, IMAGES/皮卡丘_2.png
    one folder per Pokemon   IMAGES/0025皮卡丘/front_00.png, IMAGES/0025皮卡丘/back_00.png, ...

Names starting with "." (.DS_Store, ._x AppleDouble copies, .sprites.json) are not pictures and are
passed over; every other file becomes a picture or an entry in ``skipped`` with its reason.

Output, exactly upstream's format (``cn_clip/preprocess``, ``cn_clip.training.data.LMDBDataset``):
``{split}_imgs.tsv`` (image_id TAB urlsafe-base64 PNG), ``{split}_texts.jsonl`` ({"text_id", "text",
"image_ids"}), ``lmdb/{split}/imgs`` and ``lmdb/{split}/pairs``, for train, valid and test, plus
``dataset_info.json`` (names, image size, split counts, each image's source, what was skipped).

Splits (seeded, reproducible):
- ``view``: each Pokemon's pictures are shuffled with a generator seeded by (seed, number) and dealt
  to test, valid, train; each Pokemon keeps at least one training picture. Test pictures are unseen
  pictures of seen Pokemon. A Pokemon's split does not change when other Pokemon are added.
- ``pokemon``: whole Pokemon (those found in the input) are dealt to the splits (test Pokemon are
  never seen in training).
- ``auto``: ``view`` when most Pokemon found have two or more pictures, else ``pokemon``.
Split sizes are ``fraction * count`` rounded at random (seeded), so they are right on average.
Identical pictures (same pixels after resizing) are kept once, the first in (number, path) order,
and the others are reported as duplicates, so no picture can appear in two splits. Image ids follow
the same order.

The build runs in a temporary folder beside the output and is renamed into place at the end: a
failed or interrupted build leaves any previous dataset as it was.
"""
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from cn_clip_pokemon.errors import UserError

SPLITS = ("train", "valid", "test")
SPLIT_BY = ("auto", "view", "pokemon")
INFO_FILE = "dataset_info.json"
INFO_FORMAT = 1
DEFAULT_IMAGE_SIZE = 224
INITIAL_MAP_SIZE = 32 << 20
GROUP_MEMORY = 64 << 20  # one Pokemon's encoded pictures held in memory before spilling to disk


class Picture(NamedTuple):
    """One picture found in the input; plain strings, as there may be very many of them."""

    source: str
    relative: str
    number: int
    name: str
    view: str


# ---------------------------------------------------------------- finding the pictures


def scan_pictures(images_dir, pokedex):
    """``(pictures, skipped)`` for a flat folder, a folder per Pokemon, or a mix of the two."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir} is not a folder; give --images the folder of pictures")
    pictures, skipped = [], []
    # Plain strings and os.scandir: 4-5x faster than pathlib over a sprite set's ten thousand files.
    with os.scandir(images_dir) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            try:
                number, name, _ = pokedex.parse_picture_name(entry.name, is_folder=True)
            except ValueError as error:
                files = _files_under(entry.path)
                skipped.append({"file": entry.name + "/", "reason": f"folder name: {error} ({len(files)} file(s) not used)"})
                continue
            for inside in _files_under(entry.path):
                view = os.path.splitext(inside)[0]
                pictures.append(Picture(os.path.join(entry.path, inside), f"{entry.name}/{inside}", number, name, view))
        elif entry.is_file():
            try:
                number, name, view = pokedex.parse_picture_name(entry.name)
            except ValueError as error:
                skipped.append({"file": entry.name, "reason": str(error)})
                continue
            pictures.append(Picture(entry.path, entry.name, number, name, view))
        else:
            skipped.append({"file": entry.name, "reason": "not a regular file or folder"})
    return pictures, skipped


def _files_under(folder):
    """The files under ``folder`` (hidden ones left out), sorted, relative to it with "/" separators."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        prefix = os.path.relpath(directory, folder)
        prefix = "" if prefix == "." else prefix.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in sorted(files) if not name.startswith("."))
    return found


# ---------------------------------------------------------------- the work done per picture


def process_picture(task):
    """Worker: open, composite on white, fit to a square, encode. ``(index, base64, digest, error)``.

    The base64 text comes back as ASCII bytes: the parent only copies it into files and LMDB, and
    bytes go there without another encoding pass per write.
    """
    from cn_clip_pokemon.images import PictureError, encode_picture, fit_square, open_picture

    index, path, image_size = task
    try:
        encoded = encode_picture(fit_square(open_picture(path), image_size)).encode("ascii")
        # Same pixels give the same PNG (same encoder, same settings) and different pixels a
        # different one, so the encoded text identifies the picture; it is 5x smaller to hash.
        digest = hashlib.sha1(encoded).digest()
        return index, encoded, digest, None
    except PictureError as error:
        reason = str(error)
        prefix = f"{path}: "
        return index, None, None, reason[len(prefix):] if reason.startswith(prefix) else reason
    except Exception as error:  # one bad file must never stop the build; it is reported instead
        return index, None, None, f"cannot be opened ({type(error).__name__}: {error})"


def _pool_context():
    # forkserver: workers do not inherit the parent's threads (torch, tqdm), which fork would copy.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else None)


def run_in_pool(function, tasks, workers, window=None, chunksize=8):
    """Yield ``function(task)`` for each task, in order, from ``workers`` processes.

    At most ``window`` tasks are in flight, which keeps memory flat however many there are:
    the task reader cannot run ahead of the workers, nor the workers ahead of the consumer.
    """
    if workers <= 1:
        yield from map(function, tasks)
        return
    window = window or workers * chunksize * 4
    slots = threading.BoundedSemaphore(window)
    stop = threading.Event()

    def throttled():
        # Runs in the pool's task thread, which terminate() joins: it must not block forever.
        for task in tasks:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            yield task

    pool = _pool_context().Pool(workers, initializer=_ignore_interrupts)
    try:
        for result in pool.imap(function, throttled(), chunksize=chunksize):
            slots.release()
            yield result
        pool.close()
    finally:
        stop.set()
        pool.terminate()
        pool.join()


def _ignore_interrupts():
    # Ctrl-C goes to the whole process group: let the parent stop the pool and clean up.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        return self._lmdb.open(self.path, map_size=map_size, subdir=True, lock=False, sync=False)

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

    def __init__(self, folder, deal):
        self.deal = deal
        self.writers, self.tsv_files = {}, {}
        for split in SPLITS:
            (folder / "lmdb" / split).mkdir(parents=True)
            # The map starts small and doubles when full, so it ends within 2x of the data.
            self.writers[split] = _LmdbWriter(folder / "lmdb" / split / "imgs", INITIAL_MAP_SIZE)
            self.tsv_files[split] = open(folder / f"{split}_imgs.tsv", "wb")
        self.fragment_path = folder / "images.json.part"
        self.fragment = open(self.fragment_path, "w", encoding="utf-8")
        self.folder = folder
        self.split_images = {split: {} for split in SPLITS}  # split -> number -> [image ids]
        self.names = {}  # number -> name, of the Pokemon with a kept picture
        self.count = 0
        self.group, self.spool = [], None

    def add(self, picture, encoded):
        if self.group and picture.number != self.group[0].number:
            self._write_group()
        if self.spool is None:
            self.spool = tempfile.SpooledTemporaryFile(max_size=GROUP_MEMORY, dir=self.folder)
        self.group.append(picture)
        self.spool.write(encoded + b"\n")

    def _write_group(self):
        splits = self.deal(self.group)
        self.spool.seek(0)
        for picture, split, line in zip(self.group, splits, self.spool):
            key = str(self.count).encode("ascii")
            self.tsv_files[split].write(key + b"\t" + line)
            self.writers[split].put(key, line[:-1])
            self.split_images[split].setdefault(picture.number, []).append(self.count)
            self.names[picture.number] = picture.name
            entry = {"split": split, "number": picture.number, "name": picture.name,
                     "source": picture.relative, "view": picture.view}
            self.fragment.write(("" if self.count == 0 else ",\n") + f'  "{self.count}": '
                                + json.dumps(entry, ensure_ascii=False))
            self.count += 1
        self.spool.close()
        self.group, self.spool = [], None

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
            self.tsv_files[split].close()
        self.fragment.close()
        if self.spool is not None:
            self.spool.close()


# ---------------------------------------------------------------- the build


def check_templates(templates):
    """The templates, each checked to hold one {} for the name, duplicates dropped; default the bare name."""
    templates = list(dict.fromkeys(templates)) if templates else ["{}"]
    for template in templates:
        if template.count("{}") != 1:
            raise UserError(f"template {template!r} must hold exactly one {{}} where the name goes, e.g. 一张{{}}的图片")
    return templates


def _prepare_output(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir} is a file; give --out a folder")
        if any(out_dir.iterdir()) and not (out_dir / INFO_FILE).exists():
            raise UserError(
                f"{out_dir} is not empty and holds no {INFO_FILE}, so it is not a dataset this command "
                "built; choose another --out (it would be replaced)"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def _replace_directory(new, target):
    """Put ``new`` at ``target``; an old ``target`` is moved aside first and removed only after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    # mkdtemp makes the folder private (0700); give it the permissions a plain mkdir would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
):
    """Build the dataset of ``images_dir`` into ``out_dir`` (atomically); returns a summary dict.

    The summary holds the ``dataset_info.json`` fields plus ``out_dir``, ``seconds``, ``workers``,
    ``pictures_per_second`` and ``names_with_unknown_tokens``.
    """
    from tqdm import tqdm

    from cn_clip_pokemon.pokedex import Pokedex

    started = time.perf_counter()
    if split_by not in SPLIT_BY:
        raise UserError(f"split_by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise UserError("valid and test fractions must each be in [0, 1) and add up to less than 1")
    if not 8 <= int(image_size) <= 4096:
        raise UserError(f"image size {image_size} is out of range (8-4096 pixels)")
    image_size = int(image_size)
    templates = check_templates(templates)
    pokedex = pokedex or Pokedex.load()
    workers = max(1, int(workers)) if workers else _available_cores()

    images_dir = Path(images_dir)
    pictures, skipped = scan_pictures(images_dir, pokedex)
    if strict and skipped:
        raise UserError(f"{images_dir / skipped[0]['file']}: {skipped[0]['reason']} (--strict)")
    if not pictures:
        detail = f"; {len(skipped)} entries skipped, first: {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else ""
        raise UserError(
            f"no pictures found in {images_dir}{detail}. Name them like 0025皮卡丘.png, or put them in "
            "folders named like 0025皮卡丘/"
        )

    # Names the model could never tell apart are refused before any work is done.
    names = sorted({(picture.number, picture.name) for picture in pictures})
    report = pokedex.tokenizer_report([name for _, name in names], templates)
    if report["identical"]:
        groups = "; ".join(" = ".join(group) for group in report["identical"])
        raise UserError(f"these names tokenize identically, so the model cannot tell them apart: {groups}")

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
    else:
        split_of = pokemon_splits([picture.number for picture in pictures], valid_fraction, test_fraction, seed)

        def deal(group):
            return [split_of[group[0].number]] * len(group)

    out_dir = _prepare_output(out_dir)
    temp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        images = _ImageWriter(temp, deal)
        try:
            first_seen = {}
            tasks = ((index, picture.source, image_size) for index, picture in enumerate(pictures))
            bar = tqdm(total=len(pictures), unit="picture", desc="build-dataset", disable=not progress)
            with bar:
                for index, encoded, digest, error in run_in_pool(process_picture, tasks, min(workers, len(pictures))):
                    bar.update(1)
                    picture = pictures[index]
                    if error is None and digest in first_seen:
                        error = f"same picture as {pictures[first_seen[digest]].relative} (duplicate)"
                    if error is not None:
                        if strict:
                            raise UserError(f"{picture.source}: {error} (--strict)")
                        skipped.append({"file": picture.relative, "reason": error})
                        continue
                    first_seen[digest] = index
                    images.add(picture, encoded)
            del first_seen
            images.finish()
        finally:
            images.close()
        if not images.count:
            raise UserError(
                f"none of the {len(pictures)} pictures in {images_dir} could be used; first problem: "
                f"{skipped[0]['file']}: {skipped[0]['reason']}"
            )
        split_images = images.split_images
        images_fragment = images.fragment_path
        names = sorted(images.names.items())

        # Texts: one text per (name, template); text ids are shared by all splits.
        numbers_in_order = [number for number, _ in names]
        name_of = dict(names)
        text_ids = {}
        for number in numbers_in_order:
            for template in templates:
                text_ids.setdefault(template.replace("{}", name_of[number]), len(text_ids))
        longest_text = max(len(text.encode("utf-8")) for text in text_ids)
        split_counts = {}
        for split in SPLITS:
            images_in_split = sum(len(ids) for ids in split_images[split].values())
            pair_count = images_in_split * len(templates)
            # Pairs in the order upstream's build_lmdb_dataset.py writes them from the JSONL.
            writer = _LmdbWriter(
                temp / "lmdb" / split / "pairs", _lmdb_map_size([64 + longest_text] * pair_count)
            )
            position = 0
            with open(temp / f"{split}_texts.jsonl", "w", encoding="utf-8") as jsonl:
                for number in numbers_in_order:
                    image_ids = split_images[split].get(number)
                    if not image_ids:
                        continue
                    for template in templates:
                        text = template.replace("{}", name_of[number])
                        record = {"text_id": text_ids[text], "text": text, "image_ids": image_ids}
                        jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
                        for image_id in image_ids:
                            writer.put(str(position).encode("utf-8"), pickle.dumps((image_id, text_ids[text], text)))
                            position += 1
            writer.put(b"num_samples", str(position).encode("utf-8"))
            writer.close()
            split_counts[split] = {
                "images": images_in_split,
                "pairs": position,
                "texts": len(split_images[split]) * len(templates),
            }

        info = {
            "format": INFO_FORMAT,
            "names": [name_of[number] for number in numbers_in_order],
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
        }
        _write_info(temp / INFO_FILE, info, images_fragment)
        images_fragment.unlink()
        _replace_directory(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise

    seconds = time.perf_counter() - started
    summary = {key: value for key, value in info.items() if key != "images"}
    summary.update(
        out_dir=str(out_dir),
        seconds=seconds,
        workers=workers,
        pictures=len(pictures),
        pictures_per_second=len(pictures) / seconds if seconds else 0.0,
    )
    return summary


def _write_info(path, info, images_fragment):
    """dataset_info.json with its "images" object copied from a file, so it is never all in memory."""
    head = json.dumps(info, ensure_ascii=False, indent=1)
    marker = '"images": null'
    before, after = head.split(marker, 1)
    with open(path, "w", encoding="utf-8") as out, open(images_fragment, encoding="utf-8") as fragment:
        out.write(before + '"images": {\n')
        shutil.copyfileobj(fragment, out)
        out.write("\n }" + after)


def load_dataset_info(dataset_dir):
    """The ``dataset_info.json`` of a built dataset, with a clear error when it is not one."""
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise UserError(f"{dataset_dir} has no {INFO_FILE}: build it with `cn-clip-pokemon build-dataset`")
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def print_summary(summary, file=None):
    file = file or sys.stdout
    splits = summary["splits"]
    print(
        f"built {summary['out_dir']}: {len(summary['names'])} Pokemon, "
        + ", ".join(f"{split} {splits[split]['images']} pictures/{splits[split]['pairs']} pairs" for split in SPLITS)
        + f"; {summary['image_size']} px, split by {summary['split_by']} (seed {summary['seed']}), "
        f"{summary['seconds']:.1f} s ({summary['pictures_per_second']:.0f} pictures/s, {summary['workers']} processes)",
        file=file,
    )
    if summary["names_with_unknown_tokens"]:
        listed = ", ".join(f"{name} ({' '.join(tokens)})" for name, tokens in summary["names_with_unknown_tokens"].items())
        print(f"note: characters missing from Chinese-CLIP's vocabulary become [UNK] in: {listed}", file=file)
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s):", file=file)
        for entry in summary["skipped"][:50]:
            print(f"  {entry['file']}: {entry['reason']}", file=file)
        if len(summary["skipped"]) > 50:
            print(f"  ... and {len(summary['skipped']) - 50} more (all listed in {INFO_FILE})", file=file)


# ---------------------------------------------------------------- the command


def build_dataset_arguments(parser):
    parser.description = (
        "Build upstream Chinese-CLIP's dataset (TSV, JSONL and LMDB for train/valid/test) from a "
        "folder of pictures named like 0025皮卡丘.png, or one folder per Pokemon (0025皮卡丘/*.png). "
        "Bad files are listed with the reason and left out (--strict stops instead). The build is "
        "atomic: a failed or interrupted run leaves the previous dataset as it was."
    )
    parser.add_argument("--images", type=Path, required=True, help="the picture folder")
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder, e.g. ${DATAPATH}/datasets/pokemon")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="stored picture size in pixels (square, white padding; default 224)")
    parser.add_argument(
        "--split-by", choices=SPLIT_BY, default="auto",
        help="view: unseen pictures of seen Pokemon in valid/test; pokemon: unseen Pokemon; "
        "auto (default): view when most Pokemon have 2+ pictures",
    )
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of pictures (or Pokemon) for valid (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of pictures (or Pokemon) for test (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--template", dest="templates", action="append", default=None, metavar="TEXT",
        help="prompt template with {} for the name, e.g. 一张{}的图片 (repeatable; default: the bare name)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every available core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_dataset_command(args):
    summary = build_dataset(
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
    )
    print_summary(summary)
    return 0
