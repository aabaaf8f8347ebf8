"""`build-dataset`'s work: a picture folder -> upstream Chinese-CLIP's dataset format, step by step.

Input: a flat folder of pictures named like ``0025皮卡丘.png``, one folder per Pokemon, or both mixed
(scan.py); or any captions (``--any-names``: file and folder names are the captions; ``--manifest``: a
CSV, TSV or JSONL file of paths and captions): see captions.py. A caption group then stands for a
Pokemon (its ``number``), and a picture may have several captions. Every entry of the input is
accounted for: it becomes a picture, or an entry in ``skipped`` with its kind and reason.

The steps: the options and ``--out`` are checked (output.py) before any picture is read; the
pictures are found and named; names the model cannot tell apart are refused (or, for captions,
grouped); the split policy is chosen (splits.py); every picture is opened in worker processes
(process.py) and written to its split as it comes (writers.py); then the texts and pairs, the
``dataset_info.json`` (summary.py), and the swap into ``--out`` (files.staged_folder).

Identical pictures (same pixels after resizing) are kept once, the first in (number, path) order,
and the others are reported as duplicates, so no picture can appear in two splits. Image ids follow
the same order.
"""
import time
from pathlib import Path

from cn_clip_pokemon.builder.captions import AnyNames, all_captions, number_groups, read_manifest
from cn_clip_pokemon.builder.output import OUTPUT_LISTING, check_output, is_our_dataset
from cn_clip_pokemon.builder.process import NoClock, StageClock, WorkerCpu, process_picture
from cn_clip_pokemon.builder.scan import (
    SKIP_BAD_PICTURE,
    SKIP_DUPLICATE,
    SKIP_HIDDEN,
    SKIP_OUTPUT,
    scan_pictures,
    skipped_entry,
)
from cn_clip_pokemon.builder.splits import SPLIT_BY, dealer
from cn_clip_pokemon.builder.summary import NothingToBuild, dataset_info, write_info
from cn_clip_pokemon.builder.writers import ImageWriter, captions_by_group, write_texts_and_pairs
from cn_clip_pokemon.dataset_format import check_framing, check_templates, info_path  # one template rule
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import available_cores, staged_folder, write_failure
from cn_clip_pokemon.owned_files import keep_additions
from cn_clip_pokemon.safe_reading import is_utf8, printable
from cn_clip_pokemon.workers import run_in_pool, start_workers_early

DEFAULT_IMAGE_SIZE = 224
IMAGE_SIZES = (8, 4096)  # stored picture sizes the builder takes, in pixels


def build_dataset(
    images_dir,
    out_dir,
    *,
    image_size=DEFAULT_IMAGE_SIZE,
    framing="as-is",
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

    ``framing`` (dataset_format.FRAMINGS): "as-is" stores each picture's own frame on white; "subject" crops
    each to its subject on white (images.frame_subject), and every door then frames a picture the
    same way for a checkpoint trained on the dataset (dataset_info.json and the checkpoint record it).

    Any captions (see captions.py): ``any_names`` takes file and folder names as captions, without
    the Pokedex; ``manifest`` (with ``images_dir`` None) reads picture-caption rows from a CSV, TSV
    or JSONL file. Captions are converted to simplified Chinese unless ``t2s`` is False.
    """
    from cn_clip_pokemon.pokedex import Pokedex

    started = time.perf_counter()
    clock = StageClock() if profile else NoClock()
    naming = _naming(images_dir, any_names, manifest, t2s)
    image_size, templates = _check_options(split_by, valid_fraction, test_fraction, image_size, templates)
    check_framing(framing)
    pokedex = pokedex or Pokedex.load()
    workers = max(1, int(workers)) if workers else available_cores()
    if workers > 1:
        start_workers_early(("cn_clip_pokemon.builder.process", "cn_clip_pokemon.images"))

    if not is_utf8(str(out_dir)):
        raise UserError(f"--out {printable(str(out_dir))} is not valid UTF-8, and training opens the dataset by a "
                        "UTF-8 path: choose a folder name in UTF-8")
    # --images, or the manifest's folder: it must not lie inside --out.
    images_dir = Path(images_dir) if manifest is None else Path(manifest).parent
    source_shown = printable(str(manifest if manifest is not None else images_dir))
    # The output is checked (and an interrupted build's leftovers undone) before any picture is read.
    target, exclude, cleaned, rebuild = check_output(out_dir, images_dir)
    pictures, skipped = _find_pictures(naming, images_dir, manifest, target, exclude, pokedex, t2s, strict,
                                       source_shown)
    pictures, report = _check_names(pictures, pokedex, templates, naming)

    # A Pokemon's pictures go through the workers one after another, so its view split can be dealt
    # as soon as its last picture is in, and each picture written to its split's TSV and LMDB in the
    # same pass, with no second pass over the whole set.
    pictures.sort(key=lambda picture: (picture.number, picture.relative))
    split_by, deal = dealer(split_by, pictures, valid_fraction, test_fraction, seed)

    try:
        with staged_folder(target) as temp:
            clock.lap("start, scan and names")
            wall = {"start, scan and names": time.perf_counter() - started}
            pool_started = time.perf_counter()
            images, worker_cpu, pool_threads_cpu = _write_pictures(
                temp, pictures, skipped, deal, (image_size, framing), strict, workers, progress, profile, clock
            )
            wall["pictures (workers, transfer, TSV, LMDB)"] = time.perf_counter() - pool_started
            if not images.count:
                raise NothingToBuild(f"none of the {len(pictures)} pictures in {source_shown} could be used", skipped,
                                     naming)
            captions_of = captions_by_group(images)
            split_counts = write_texts_and_pairs(temp, images, captions_of, templates)
            info = dataset_info(naming, captions_of, image_size, framing, split_counts, skipped, split_by, seed, templates,
                                valid_fraction, test_fraction, report, images.count)
            clock.lap("texts and pairs")
            write_info(info_path(temp), info, images.fragment_path)
            images.fragment_path.unlink()
            clock.lap("info")
            # What the build did not write in the old dataset (upstream's extract_features writes
            # {split}_imgs.img_feat.jsonl and {split}_texts.txt_feat.jsonl there, its predictions may go
            # there too) moves into the new one, as hard links, before the swap.
            kept = keep_additions(target, temp, OUTPUT_LISTING, OUTPUT_LISTING, "build-dataset", "dataset") \
                if rebuild else []
        clock.lap("rename")
        wall["texts, pairs, info, rename"] = time.perf_counter() - started - sum(wall.values())
    except BaseException as error:
        import lmdb

        if isinstance(error, (OSError, lmdb.Error)):  # the disk filled up, the folder went read-only...
            kept = f"the previous dataset in {printable(str(out_dir))} is as it was" if is_our_dataset(target) else None
            raise write_failure(error, target.parent, kept) from None
        raise

    summary = _summary(info, images, out_dir, cleaned, kept, time.perf_counter() - started, workers, len(pictures))
    if profile:
        summary["profile"] = _profile(clock, pool_threads_cpu, worker_cpu, workers, wall)
    return summary


def _naming(images_dir, any_names, manifest, t2s):
    """Where the captions come from: "pokedex", "any-names" or "manifest" (one source, checked)."""
    if manifest is not None and (images_dir is not None or any_names):
        raise UserError("give either --manifest or --images (with or without --any-names), not both")
    if manifest is None and images_dir is None:
        raise UserError("give --images (a picture folder) or --manifest (a CSV, TSV or JSONL file)")
    naming = "manifest" if manifest is not None else "any-names" if any_names else "pokedex"
    if naming == "pokedex" and not t2s:
        raise UserError("--no-t2s keeps captions as they are, with --any-names or --manifest; "
                        "Pokedex names are always simplified")
    return naming


def _check_options(split_by, valid_fraction, test_fraction, image_size, templates):
    """``(image_size, templates)`` checked (the split options too): a one-line UserError if not."""
    if split_by not in SPLIT_BY:
        raise UserError(f"split_by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise UserError("valid and test fractions must each be in [0, 1) and add up to less than 1")
    if not IMAGE_SIZES[0] <= int(image_size) <= IMAGE_SIZES[1]:
        raise UserError(f"image size {image_size} is out of range ({IMAGE_SIZES[0]}-{IMAGE_SIZES[1]} pixels)")
    templates = check_templates(templates)
    for template in templates:
        if not is_utf8(template):  # a command-line argument's undecodable bytes
            raise UserError(f"template {printable(template)} is not valid UTF-8; write it in UTF-8, e.g. 一张{{}}的图片")
    return int(image_size), templates


def _find_pictures(naming, images_dir, manifest, target, exclude, pokedex, t2s, strict, source_shown):
    """``(pictures, skipped)`` of the input: the folder scanned, or the manifest read."""
    if naming == "manifest":
        pictures, skipped = read_manifest(manifest, t2s=t2s, out_dir=target)
    else:
        pictures, skipped = scan_pictures(images_dir, AnyNames(t2s) if naming == "any-names" else pokedex,
                                          exclude=exclude)
    # --strict stops at bad entries; hidden files and the --out folder are not meant as pictures.
    bad = [entry for entry in skipped if entry["kind"] not in (SKIP_HIDDEN, SKIP_OUTPUT)]
    if strict and bad:
        where = printable(str(images_dir))
        raise UserError(f"{where}/{bad[0]['file']}: {bad[0]['reason']} (--strict)")
    if not pictures:
        raise NothingToBuild(f"no pictures found in {source_shown}", skipped, naming)
    return pictures, skipped


def _check_names(pictures, pokedex, templates, naming):
    """``(pictures, report)``: the tokenizer's report on the names, and the pictures grouped by it."""
    if naming == "pokedex":
        # Names the model could never tell apart are refused before any work is done.
        names = sorted({(picture.number, picture.name) for picture in pictures})
        report = pokedex.tokenizer_report([name for _, name in names], templates)
        if report["identical"]:
            groups = "; ".join(" = ".join(group) for group in report["identical"])
            raise UserError(f"these names tokenize identically, so the model cannot tell them apart: {groups}")
        return pictures, report
    # Captions the model cannot tell apart are one text to it: they join one group (never in
    # one batch, dealt to one split) and are listed, not refused.
    report = pokedex.tokenizer_report(all_captions(pictures), templates)
    return number_groups(pictures, report["identical"]), report


def _write_pictures(folder, pictures, skipped, deal, storing, strict, workers, progress, profile, clock):
    """Every picture through the workers (process.py), in order, each kept one written to its split as
    it comes; bad pictures and duplicates join ``skipped`` (with ``strict`` the first one stops the
    build). ``storing``: ``(image_size, framing)``. Returns ``(images, worker_cpu, pool_threads_cpu)``: the closed ImageWriter, the workers'
    CPU (from their timings, when profiled) and that of the pool's threads in this process."""
    from cn_clip_pokemon.progress import progress_bar

    images = ImageWriter(folder, deal, clock)
    worker_cpu = WorkerCpu()
    process_cpu_started = time.process_time()
    thread_cpu_started = time.thread_time()
    try:
        first_seen = {}
        tasks = ((index, picture.source, *storing, profile) for index, picture in enumerate(pictures))
        bar = progress_bar(total=len(pictures), unit="picture", description="build-dataset", enabled=progress)
        with bar:
            for index, encoded, digest, error, timing in run_in_pool(process_picture, tasks, min(workers, len(pictures)), chunksize=16):
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
                    skipped.append(skipped_entry(picture.relative, kind, error))
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
    return images, worker_cpu, pool_threads_cpu


def _summary(info, images, out_dir, cleaned, kept, seconds, workers, pictures):
    """What build_dataset returns: the info less its "images", and how the build went."""
    summary = {key: value for key, value in info.items() if key != "images"}
    summary.update(
        out_dir=str(out_dir),
        cleaned=cleaned,
        kept=kept,  # what was in --out that the build did not write, kept in the new dataset
        seconds=seconds,
        workers=workers,
        pictures=pictures,
        pictures_per_second=pictures / seconds if seconds else 0.0,
    )
    if info["naming"] != "pokedex":
        # captions of the test split that no training picture has (a flat folder: one picture each)
        trained = {caption for _, caption in images.caption_images["train"]}
        tested = {caption for _, caption in images.caption_images["test"]}
        summary["test_captions"] = len(tested)
        summary["test_captions_unseen_in_training"] = len(tested - trained)
    return summary


def _profile(clock, pool_threads_cpu, worker_cpu, workers, wall):
    """Where a profiled build's CPU and time went (see bench/bench_builder.py)."""
    profile = {
        "parent": clock.seconds,  # this process's main thread, CPU seconds per stage
        "pool_threads": pool_threads_cpu,
        "parent_process": time.process_time(),  # all of this process's CPU so far, start-up included
        "workers": worker_cpu.summary() if workers > 1 else None,  # one process: stages run in this one
        "wall": wall,
    }
    if workers <= 1:  # no pool: the stages ran in the main thread, inside the "waiting" lap
        profile["in_process_stages"] = worker_cpu.summary()["stages"]
    return profile
