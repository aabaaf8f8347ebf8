"""One GPU check in one command: the CUDA tests, a side-by-side training benchmark, a batch-size search.

    python bench/gpu_check.py                  # on a GPU machine: under 8 minutes on one H200
    python bench/gpu_check.py --smoke          # the same code, tiny configs, CPU or GPU, < 2 minutes
    bash bench/gpu_check.sh                    # installs .whl/ first (see bench/prepare_gpu_wheels.sh)

Stages, each in fresh processes, under one time budget (--budget) with a timeout per stage, so the
command always ends in time and reports what it got:

1. tests: ``pytest -m cuda tests/test_cuda.py`` (NCCL process group of one, fp16 amp with a
   GradScaler through the real `cn-clip-pokemon train`, DDP device ids, pin_memory, the fast
   attention equal to the default, load_model on CUDA). Skipped, with the reason, without CUDA.
2. dataset: synthetic pictures (one distinct colour and one distinct caption each) built by
   cn_clip_pokemon.builder into upstream's LMDB format.
3. bench: the same training, side by side, from random weights (ViT-B-16 + RoBERTa-wwm-ext-base-
   chinese, batch 128, --precision amp, a fixed number of steps):
     upstream  upstream's UNMODIFIED cn_clip.training.main, from a copy of the installed cn_clip
               put first on PYTHONPATH, through `python -m torch.distributed.run --nproc_per_node=1`
               as upstream's README runs it (needs CUDA: upstream hard-codes NCCL);
     launcher  `cn-clip-pokemon train` (patches/ applied in memory);
     fast      `cn-clip-pokemon train --use-flash-attention` (scaled_dot_product_attention).
   samples/s come from the "Batch Time" of each step logged after the warm-up steps (upstream's log
   line, which every variant prints; amp's GradScaler synchronises every step, so a step's time is
   its GPU time); peak GPU memory is torch.cuda.max_memory_allocated of the training process,
   recorded at its exit by a small wrapper (a process cannot read another's); ratios are against
   upstream. A variant that fails is reported as failed with its last error line; the others run.
4. search: the largest ViT-L-14 (+ RoBERTa-wwm-ext-base-chinese) batch that trains with
   --grad-checkpointing: doubling from --search-start, then bisecting between the largest batch that
   fit and the smallest that ran out of memory, a few steps each, until the bracket is within 1/8 or
   the stage's time is spent. The dataset's size caps it (a batch never repeats a picture).

The results go to a JSON file ($OUT/gpu_check.json when OUT is set, else --out) after every stage,
and a markdown table is printed at the end. --smoke runs every stage with ViT-T-8-64 +
RBT-Tiny-chinese, a tiny dataset, batch 8 and a few steps; without CUDA the upstream variant is
reported as skipped (with CUDA, where it runs, the benchmark uses upstream's smallest configs,
ViT-B-32 + RBT3-chinese, since upstream's argparse accepts only its own model names), and the
search stops at a small cap (a CPU does not run out of GPU memory).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Settings of the two modes. Full mode is sized for one H200 (16 cores) inside ~7.5 minutes.
MODES = {
    "full": {
        "vision_model": "ViT-B-16",
        "text_model": "RoBERTa-wwm-ext-base-chinese",
        "batch_size": 128,
        "warmup_steps": 10,
        "timed_steps": 50,
        "context_length": 52,
        "pictures": 8192,
        "image_size": 224,
        "search_vision_model": "ViT-L-14",
        "search_text_model": "RoBERTa-wwm-ext-base-chinese",
        "search_start": 1024,
        "search_cap": None,  # the dataset's size
        "search_steps": 2,
        "budget": 440,  # + installing the wheels and starting Python: inside 8 minutes
        "timeouts": {"tests": 150, "variant": 100, "search": 200, "trial": 90},
        # the least time a later stage is left when an earlier one runs long
        "reserve": {"dataset": 20, "variant": 30, "search": 45},
    },
    "smoke": {
        "vision_model": "ViT-T-8-64",
        "text_model": "RBT-Tiny-chinese",
        "batch_size": 8,
        "warmup_steps": 2,
        "timed_steps": 4,
        "context_length": 16,
        "pictures": 64,
        "image_size": 64,
        # upstream's argparse takes only its own model names: with CUDA, where the upstream variant
        # runs, --smoke benchmarks all three variants with upstream's smallest configs instead
        "cuda_bench_models": ("ViT-B-32", "RBT3-chinese"),
        "search_vision_model": "ViT-T-8-64",
        "search_text_model": "RBT-Tiny-chinese",
        "search_start": 8,
        "search_cap": 16,
        "search_steps": 2,
        "budget": 110,
        "timeouts": {"tests": 60, "variant": 45, "search": 60, "trial": 40},
        "reserve": {"dataset": 5, "variant": 15, "search": 25},
    },
}
VARIANTS = ("upstream", "launcher", "fast")
VARIANT_LABELS = {
    "upstream": "upstream main (unmodified, torchrun)",
    "launcher": "cn-clip-pokemon train",
    "fast": "cn-clip-pokemon train --use-flash-attention",
}
STEP_LINE = re.compile(
    r"Global Steps: (?P<step>\d+)/(?P<max>\d+) .*?Batch Time: (?P<time>[0-9.]+)s .*?Global Batch Size: (?P<batch>\d+)"
)
OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)

# Runs a program (a script path, or -m module) and writes, when it exits, what a process can only
# know about itself: its peak GPU memory, its peak RSS, the exception that ended it, which cn_clip it
# imported and whether cn_clip_pokemon was imported at all.
WRAPPER = '''\
import atexit, json, os, resource, runpy, sys

REPORT_DIR = os.environ["GPU_CHECK_REPORT_DIR"]
state = {"exception": None}


def report():
    record = {
        "pid": os.getpid(),
        "exception": state["exception"],
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cn_clip_file": getattr(sys.modules.get("cn_clip"), "__file__", None),
        "cn_clip_pokemon_imported": "cn_clip_pokemon" in sys.modules,
    }
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            record["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            record["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
            record["gpu"] = torch.cuda.get_device_name()
    except Exception as error:  # a broken CUDA context must not hide the rest of the record
        record["cuda_error"] = repr(error)
    with open(os.path.join(REPORT_DIR, "%d.json" % os.getpid()), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    atexit.register(report)
    if sys.argv[1] == "-m":
        module, sys.argv = sys.argv[2], [sys.argv[2]] + sys.argv[3:]
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, sys.argv = sys.argv[1], sys.argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` has it
        run = lambda: runpy.run_path(script, run_name="__main__")
    try:
        run()
    except SystemExit:
        raise
    except BaseException as error:
        state["exception"] = "%s: %s" % (type(error).__name__, str(error)[:500])
        raise
'''


# ------------------------------------------------------------------------------ time budget


class Budget:
    """A deadline for the whole check; each stage asks for its timeout, keeping time for later ones."""

    def __init__(self, seconds, clock=time.monotonic):
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + seconds

    def remaining(self):
        return self.deadline - self.clock()

    def elapsed(self):
        return self.clock() - self.started

    def timeout(self, cap, keep=0.0):
        """Seconds a stage may take: at most ``cap``, leaving ``keep`` seconds for the stages after it."""
        return max(0.0, min(cap, self.remaining() - keep))


def run_process(command, timeout, log_path, cwd=None, env=None):
    """Run ``command`` in its own process group with output to ``log_path``; kill the group on timeout.

    Returns ``(returncode or None on timeout, seconds, output text)``.
    """
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(process)
    output = Path(log_path).read_text(encoding="utf-8", errors="replace")
    return code, time.monotonic() - started, output


def _kill_group(process):
    """Kill what is left of the process group (data workers, torchrun's children); then reap."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def last_error_line(output):
    """The line that says why a run failed: the last exception or "error:" line (torchrun's own
    ChildFailedError, which only says that a worker failed, left out), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if "ChildFailedError" in line:
            continue
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line) or re.search(r"\berror:", line, re.IGNORECASE):
            return line[:400]
    return lines[-1][:400] if lines else "(no output)"


# ------------------------------------------------------------------------------ the dataset

_DIGITS = "零一二三四五六七八九"


def synthetic_name(number):
    """A distinct caption for picture ``number``: 色块 + its digits in Chinese (one token each)."""
    return "色块" + "".join(_DIGITS[int(digit)] for digit in str(number))


def synthetic_colour(number):
    """A distinct RGB colour for each number below 2**24 (an odd multiplier is a bijection mod 2**24)."""
    value = (number * 2654435761) % (1 << 24)
    return value >> 16, (value >> 8) & 255, value & 255


def build_synthetic_dataset(folder, count, image_size, workers=None):
    """``count`` one-colour pictures with distinct captions, built by the builder into ``folder/dataset``.

    The pictures are named like a Pokemon folder (``00001色块一.png``) and read with a Pokedex of the
    synthetic names, so they go through the same builder, checks and format as a user's pictures.
    Every picture lands in the training split. Returns ``(dataset_dir, summary)``.
    """
    from PIL import Image

    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.pokedex import Pokedex

    folder = Path(folder)
    pictures = folder / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        # 16 px is enough: the builder fits every picture to image_size, and small files write fast
        Image.new("RGB", (16, 16), synthetic_colour(number)).save(pictures / f"{number:05d}{synthetic_name(number)}.png")
    pokedex = Pokedex([{"number": n, "zh_hans": synthetic_name(n)} for n in range(1, count + 1)], source="gpu_check")
    summary = build_dataset(
        pictures,
        folder / "dataset",
        image_size=image_size,
        split_by="view",
        valid_fraction=0.0,
        test_fraction=0.0,
        workers=workers,
        progress=False,
        pokedex=pokedex,
    )
    shutil.rmtree(pictures, ignore_errors=True)
    return folder / "dataset", summary


# ------------------------------------------------------------------------------ one training run


def training_flags(dataset, vision_model, text_model, batch_size, steps, context_length, num_workers, name):
    """Upstream's flags, the same for every variant. --logs none: no checkpoint is written (it would
    take longer than the steps); the log lines still go to the output, where they are read."""
    from cn_clip_pokemon.dataset_format import lmdb_dir

    return [
        "--train-data", str(lmdb_dir(dataset, "train")),
        "--vision-model", vision_model,
        "--text-model", text_model,
        "--context-length", str(context_length),
        "--batch-size", str(batch_size),
        "--precision", "amp",
        "--lr", "5e-5",
        "--wd", "0.001",
        "--warmup", "5",
        "--max-steps", str(steps),
        "--log-interval", "1",
        "--num-workers", str(num_workers),
        "--seed", "0",
        "--logs", "none",
        "--name", name,
    ]


def parse_steps(output):
    """``{step: (seconds, global batch size)}`` from upstream's training log lines."""
    steps = {}
    for match in STEP_LINE.finditer(output):
        steps[int(match["step"])] = (float(match["time"]), int(match["batch"]))
    return steps


def throughput(steps, warmup_steps):
    """samples/s over the steps after the warm-up, and the median step time; None when none was timed."""
    timed = [value for step, value in sorted(steps.items()) if step > warmup_steps]
    seconds = sum(time_ for time_, _ in timed)
    if not timed or seconds <= 0:
        return None, None, 0
    return sum(batch for _, batch in timed) / seconds, statistics.median(t for t, _ in timed), len(timed)


def read_wrapper_reports(report_dir):
    """The wrapper's records, the one of the process that used the most GPU memory (else RSS) first."""
    records = []
    for path in Path(report_dir).glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (r.get("max_memory_allocated_mib") or 0, r.get("max_rss_mib") or 0), reverse=True)
    return records


class Workspace:
    """Scratch folders, the wrapper script, the upstream copy, and the environment of child processes."""

    def __init__(self, root, python, log, threads=None):
        self.root = Path(root)
        self.python = python
        self.log = log
        self.threads = threads  # OMP_NUM_THREADS of every child, when not None
        self.wrapper = self.root / "gpu_check_wrapper.py"
        self.wrapper.write_text(WRAPPER)
        self.upstream_copy = None
        self.counter = 0

    def base_env(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        # the working tree's cn_clip_pokemon first (a wheel in /tmp/site gives only the entry points)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.pop("CN_CLIP_POKEMON_DEVICE", None)
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        return env

    def make_upstream_copy(self):
        """A copy of the installed cn_clip package: run from it, nothing of ours can touch it."""
        if self.upstream_copy is None:
            import importlib.util

            spec = importlib.util.find_spec("cn_clip")
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError("cn_clip is not installed")
            source = Path(list(spec.submodule_search_locations)[0])
            target = self.root / "upstream-cn_clip"
            shutil.copytree(source, target / "cn_clip", ignore=shutil.ignore_patterns("__pycache__"))
            self.upstream_copy = target
        return self.upstream_copy

    def run_training(self, kind, flags, timeout, extra=()):
        """One training process of ``kind`` (upstream, launcher, fast); returns a result dict."""
        self.counter += 1
        folder = self.root / f"run-{self.counter:02d}-{kind}"
        reports = folder / "reports"
        reports.mkdir(parents=True)
        env = self.base_env()
        env["GPU_CHECK_REPORT_DIR"] = str(reports)
        if kind == "upstream":
            copy = self.make_upstream_copy()
            # upstream's own code only: its copy first, and not the working tree (cn_clip_pokemon)
            rest = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and Path(p).resolve() != REPO]
            env["PYTHONPATH"] = os.pathsep.join([str(copy)] + rest)
            command = [
                self.python, "-m", "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=1",
                # "--" ends torchrun's options: it would take upstream's --logs for its --logs-specs
                "--",
                str(self.wrapper), str(copy / "cn_clip" / "training" / "main.py"), *flags,
            ]
        else:
            command = [self.python, str(self.wrapper), "-m", "cn_clip_pokemon", "train", *flags, *extra]
        code, seconds, output = run_process(command, timeout, folder / "output.log", cwd=folder, env=env)
        self.log(f"--- {kind}: {' '.join(command)}\n--- exit {code} after {seconds:.1f} s\n{output[-20000:]}\n")
        records = read_wrapper_reports(reports)
        main_record = records[0] if records else {}
        result = {
            "command": command,
            "exit_code": code,
            "wall_s": round(seconds, 1),
            "steps": parse_steps(output),
            "out_of_memory": bool(OUT_OF_MEMORY.search(output)) or "OutOfMemoryError" in str(main_record.get("exception")),
            "process": main_record,
            "output_tail": output[-3000:],
        }
        if code is None:
            result["status"], result["reason"] = "timeout", f"killed after {timeout:.0f} s (stage timeout)"
        elif code != 0:
            result["status"], result["reason"] = "failed", main_record.get("exception") or last_error_line(output)
        else:
            result["status"], result["reason"] = "ok", None
        shutil.rmtree(folder, ignore_errors=True)
        return result


# ------------------------------------------------------------------------------ stages


def stage_tests(workspace, timeout, cuda):
    """pytest -m cuda tests/test_cuda.py; per-test outcomes from its JUnit XML."""
    xml_path = workspace.root / "cuda-tests.xml"
    command = [
        workspace.python, "-m", "pytest", "tests/test_cuda.py",
        "-m", "cuda",
        "-q",
        "-rA",
        "-p", "no:cacheprovider",
        f"--junitxml={xml_path}",
    ]
    code, seconds, output = run_process(command, timeout, workspace.root / "cuda-tests.log", cwd=REPO, env=workspace.base_env())
    workspace.log(f"--- tests: {' '.join(command)}\n--- exit {code} after {seconds:.1f} s\n{output[-30000:]}\n")
    tests = parse_junit(xml_path)
    counts = {outcome: sum(1 for t in tests if t["outcome"] == outcome) for outcome in ("passed", "failed", "skipped")}
    if code is None:
        status = "timeout"
    elif counts["failed"] or code not in (0, 5):  # 5: nothing collected
        status = "failed"
    elif counts["passed"]:
        status = "ok"
    else:
        status = "skipped"
    return {
        "status": status,
        "cuda": cuda,
        "exit_code": code,
        "wall_s": round(seconds, 1),
        "counts": counts,
        "tests": tests,
        "output_tail": output[-3000:] if status in ("failed", "timeout") else output[-600:],
    }


def parse_junit(path):
    """``[{"name", "outcome", "message"}]`` from pytest's JUnit XML ([] if it was not written)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return []
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:500]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:500]
        tests.append({"name": case.get("name"), "outcome": outcome, "message": message})
    return tests


def stage_bench(workspace, settings, dataset, cuda, num_workers, budget, variant_cap, keep):
    """The three variants, one after another, on the same data and flags."""
    warmup, timed = settings["warmup_steps"], settings["timed_steps"]
    results = {}
    for index, kind in enumerate(VARIANTS):
        label = VARIANT_LABELS[kind]
        if kind == "upstream" and not cuda:
            results[kind] = {"label": label, "status": "skipped", "reason": "needs CUDA: upstream's main hard-codes NCCL and .cuda()"}
            continue
        later = len(VARIANTS) - index - 1
        timeout = budget.timeout(variant_cap, keep=keep + later * settings["reserve"]["variant"])
        if timeout < 10:
            results[kind] = {"label": label, "status": "skipped", "reason": "time budget spent"}
            continue
        flags = training_flags(
            dataset, settings["vision_model"], settings["text_model"], settings["batch_size"],
            warmup + timed, settings["context_length"], num_workers, f"bench-{kind}",
        )
        extra = ["--use-flash-attention"] if kind == "fast" else []
        try:
            run = workspace.run_training(kind, flags, timeout, extra=extra)
        except Exception as error:  # e.g. no cn_clip to copy: this variant fails, the others run
            results[kind] = {"label": label, "status": "failed", "reason": f"{type(error).__name__}: {error}"}
            continue
        samples_per_second, median_step, timed_steps = throughput(run["steps"], warmup)
        record = {
            "label": label,
            "status": run["status"],
            "reason": run["reason"],
            "samples_per_second": samples_per_second,
            "median_step_s": median_step,
            "timed_steps": timed_steps,
            "logged_steps": len(run["steps"]),
            "peak_gpu_mib": run["process"].get("max_memory_allocated_mib"),
            "peak_gpu_reserved_mib": run["process"].get("max_memory_reserved_mib"),
            "peak_rss_mib": run["process"].get("max_rss_mib"),
            "cn_clip_file": run["process"].get("cn_clip_file"),
            "cn_clip_pokemon_imported": run["process"].get("cn_clip_pokemon_imported"),
            "wall_s": run["wall_s"],
            "command": run["command"],
        }
        if run["status"] == "ok" and samples_per_second is None:
            record["status"], record["reason"] = "failed", f"no step after the {warmup} warm-up steps was logged"
        if kind == "upstream" and run["status"] == "ok" and record["cn_clip_pokemon_imported"]:
            record["status"], record["reason"] = "failed", "cn_clip_pokemon was imported: not upstream's unmodified code"
        if record["status"] != "ok":
            record["output_tail"] = run["output_tail"]
        results[kind] = record
    base = results.get("upstream", {})
    for kind, record in results.items():
        if record.get("status") != "ok" or base.get("status") != "ok":
            continue
        record["speed_vs_upstream"] = record["samples_per_second"] / base["samples_per_second"]
        if record.get("peak_gpu_mib") and base.get("peak_gpu_mib"):
            record["memory_vs_upstream"] = record["peak_gpu_mib"] / base["peak_gpu_mib"]
    launcher = results.get("launcher", {})
    fast = results.get("fast", {})
    if launcher.get("status") == "ok" and fast.get("status") == "ok":
        fast["speed_vs_launcher"] = fast["samples_per_second"] / launcher["samples_per_second"]
        if fast.get("peak_gpu_mib") and launcher.get("peak_gpu_mib"):
            fast["memory_vs_launcher"] = fast["peak_gpu_mib"] / launcher["peak_gpu_mib"]
    return {
        "status": "ok" if all(r.get("status") in ("ok", "skipped") for r in results.values()) else "failed",
        "vision_model": settings["vision_model"],
        "text_model": settings["text_model"],
        "batch_size": settings["batch_size"],
        "precision": "amp",
        "warmup_steps": warmup,
        "timed_steps": timed,
        "num_workers": num_workers,
        "variants": results,
    }


def next_batch(fits, fails, start, cap, granularity):
    """The next batch size to try, or None when the search is done.

    Doubling from ``start`` while everything fits (up to ``cap``); once a batch has failed, bisection
    between the largest that fit and the smallest that failed, rounded to ``granularity``, until the
    two are within max(granularity, 1/8 of the fit). If ``start`` already fails, halving down.
    """
    largest_fit = max(fits, default=None)
    smallest_fail = min(fails, default=None)
    if largest_fit is None and smallest_fail is None:
        return start
    if smallest_fail is None:
        return None if largest_fit >= cap else min(2 * largest_fit, cap)
    if largest_fit is None:
        lower = smallest_fail // 2
        return lower if lower >= 1 and lower < smallest_fail else None
    if smallest_fail - largest_fit <= max(granularity, largest_fit // 8):
        return None
    middle = (largest_fit + smallest_fail) // 2
    middle = max(largest_fit + 1, middle // granularity * granularity)
    return middle if middle < smallest_fail else None


def stage_search(workspace, settings, dataset, pairs, num_workers, budget, stage_cap, trial_cap):
    """The largest --grad-checkpointing batch of the search models that trains ``search_steps`` steps."""
    cap = min(pairs, settings["search_cap"] or pairs)
    granularity = max(1, settings["search_start"] // 16)
    stage_deadline = budget.clock() + budget.timeout(stage_cap)
    fits, fails, trials = [], [], []
    stopped = None
    batch = next_batch(fits, fails, settings["search_start"], cap, granularity)
    while batch is not None:
        remaining = stage_deadline - budget.clock()
        if remaining < 15:
            stopped = "time cap reached"
            break
        flags = training_flags(
            dataset, settings["search_vision_model"], settings["search_text_model"], batch,
            settings["search_steps"], settings["context_length"], num_workers, f"search-{batch}",
        )
        run = workspace.run_training("search", flags, min(trial_cap, remaining), extra=["--grad-checkpointing"])
        trial = {
            "batch_size": batch,
            "wall_s": run["wall_s"],
            "peak_gpu_mib": run["process"].get("max_memory_allocated_mib"),
            "peak_gpu_reserved_mib": run["process"].get("max_memory_reserved_mib"),
        }
        if run["status"] == "ok" and len(run["steps"]) >= settings["search_steps"]:
            trial["outcome"] = "fits"
            fits.append(batch)
        elif run["out_of_memory"]:
            trial["outcome"] = "out of memory"
            fails.append(batch)
        else:
            trial["outcome"] = run["status"] if run["status"] != "ok" else "failed"
            trial["reason"] = run["reason"] or f"only {len(run['steps'])} step(s) logged"
            trial["output_tail"] = run["output_tail"]
            trials.append(trial)
            stopped = f"batch {batch}: {trial['outcome']} ({trial['reason']})"
            break
        trials.append(trial)
        batch = next_batch(fits, fails, settings["search_start"], cap, granularity)
    largest_fit = max(fits, default=None)
    smallest_fail = min(fails, default=None)
    result = {
        "status": "ok" if largest_fit is not None and not (stopped and stopped.startswith("batch")) else "failed",
        "vision_model": settings["search_vision_model"],
        "text_model": settings["search_text_model"],
        "grad_checkpointing": True,
        "precision": "amp",
        "steps_per_trial": settings["search_steps"],
        "cap": cap,
        "largest_batch_that_fits": largest_fit,
        "smallest_batch_out_of_memory": smallest_fail,
        "limited_by_cap": smallest_fail is None and largest_fit == cap,
        "stopped": stopped,
        "trials": trials,
    }
    result["prediction"] = memory_prediction(trials)
    return result


def memory_prediction(trials):
    """A straight line through the peak memory of the two largest batches that fit: per-sample MiB,
    fixed MiB, and the batch at which it would reach the GPU's memory (None without CUDA figures)."""
    points = sorted((t["batch_size"], t["peak_gpu_mib"]) for t in trials if t.get("outcome") == "fits" and t.get("peak_gpu_mib"))
    if len(points) < 2:
        return None
    (b1, m1), (b2, m2) = points[-2], points[-1]
    if b2 == b1 or m2 <= m1:
        return None
    per_sample = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_sample * b1
    prediction = {"per_sample_mib": round(per_sample, 2), "fixed_mib": round(fixed, 1)}
    total = gpu_properties().get("memory_mib")
    if total:
        prediction["batch_at_total_memory"] = int((total - fixed) / per_sample)
    return prediction


def gpu_properties():
    """``{"name", "memory_mib"}`` of GPU 0 from nvidia-smi ({} without it). Not through torch: a CUDA
    context in this process would take GPU memory from the runs it measures."""
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip().splitlines()[0]
        name, memory = [part.strip() for part in line.rsplit(",", 1)]
        return {"name": name, "memory_mib": float(memory)}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {}


# ------------------------------------------------------------------------------ report


def _number(value, digits=1, suffix=""):
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def markdown_report(results):
    """The results as markdown tables: tests, the benchmark's variants, the search."""
    lines = [f"## GPU check ({results['mode']}): {results.get('device', '?')}", ""]
    tests = results["stages"].get("tests")
    if tests:
        counts = tests.get("counts", {})
        lines.append(
            f"CUDA tests: {tests['status']} ({counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
            f"{counts.get('skipped', 0)} skipped, {tests.get('wall_s', '-')} s)"
        )
        for test in tests.get("tests", []):
            if test["outcome"] != "passed":
                lines.append(f"- {test['name']}: {test['outcome']}: {test['message']}")
        lines.append("")
    dataset = results["stages"].get("dataset")
    if dataset:
        lines.append(f"Dataset: {dataset['status']}, {dataset.get('pairs', '-')} pairs at {dataset.get('image_size', '-')} px ({dataset.get('wall_s', '-')} s)")
        lines.append("")
    bench = results["stages"].get("bench")
    if bench:
        lines.append(
            f"Training, {bench['vision_model']} + {bench['text_model']}, batch {bench['batch_size']}, amp, "
            f"{bench['timed_steps']} timed steps after {bench['warmup_steps']}, {bench['num_workers']} data workers:"
        )
        lines.append("")
        lines.append("| variant | status | samples/s | vs upstream | peak GPU MiB | vs upstream | peak RSS MiB | wall s |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind in VARIANTS:
            record = bench["variants"].get(kind, {})
            status = record.get("status", "-")
            if record.get("reason"):
                status += f": {record['reason']}"
            lines.append(
                f"| {VARIANT_LABELS[kind]} | {status.replace('|', '/')} | {_number(record.get('samples_per_second'))} | "
                f"{_number(record.get('speed_vs_upstream'), 2, 'x')} | {_number(record.get('peak_gpu_mib'), 0)} | "
                f"{_number(record.get('memory_vs_upstream'), 2, 'x')} | {_number(record.get('peak_rss_mib'), 0)} | "
                f"{_number(record.get('wall_s'))} |"
            )
        fast = bench["variants"].get("fast", {})
        if fast.get("speed_vs_launcher") is not None:
            lines.append("")
            lines.append(
                f"--use-flash-attention vs default attention: {fast['speed_vs_launcher']:.2f}x samples/s, "
                f"{_number(fast.get('memory_vs_launcher'), 2, 'x')} peak GPU memory"
            )
        lines.append("")
    search = results["stages"].get("search")
    if search:
        lines.append(f"Largest {search['vision_model']} + {search['text_model']} batch with --grad-checkpointing (amp): {search['status']}")
        lines.append("")
        lines.append("| batch | outcome | peak GPU MiB | wall s |")
        lines.append("| ---: | --- | ---: | ---: |")
        for trial in search.get("trials", []):
            lines.append(f"| {trial['batch_size']} | {trial['outcome']} | {_number(trial.get('peak_gpu_mib'), 0)} | {_number(trial.get('wall_s'))} |")
        fit = search.get("largest_batch_that_fits")
        if fit is None:
            summary = "no batch fitted"
        elif search.get("limited_by_cap"):
            summary = f"fits at {fit}, the cap (the dataset's size or --smoke's cap): the largest batch is at least that"
        elif search.get("smallest_batch_out_of_memory"):
            summary = f"largest batch that fits: {fit} (out of memory at {search['smallest_batch_out_of_memory']})"
        else:
            summary = f"largest batch that fits: {fit}"
        if search.get("stopped"):
            summary += f"; stopped: {search['stopped']}"
        prediction = search.get("prediction")
        if prediction and prediction.get("batch_at_total_memory"):
            summary += (
                f"; memory grows {prediction['per_sample_mib']} MiB a sample over {prediction['fixed_mib']:.0f} MiB fixed, "
                f"which reaches the GPU's memory at ~{prediction['batch_at_total_memory']}"
            )
        lines.append("")
        lines.append(summary)
        lines.append("")
    for name, stage in results["stages"].items():
        if stage.get("status") == "skipped" and stage.get("reason"):
            lines.append(f"{name}: skipped: {stage['reason']}")
    lines.append(f"Total: {results.get('wall_s', '-')} s of a {results['budget_s']} s budget")
    return "\n".join(lines)


def default_out_path():
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return Path(tempfile.gettempdir()) / "gpu_check.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.py",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Full mode is sized for one H200 inside 8 minutes; --smoke runs the same code with tiny "
            "configs on a CPU in under 2 minutes. Results: JSON in --out (default $OUT/gpu_check.json, "
            "else gpu_check.json in the temporary folder), a markdown table on stdout, and each run's "
            "output in gpu_check.log beside the JSON."
        ),
    )
    parser.add_argument("--smoke", action="store_true", help="tiny configs, tiny dataset, few steps (CPU or GPU)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON results file (default: $OUT/gpu_check.json)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 440, --smoke 110)")
    parser.add_argument(
        "--stages",
        default="tests,bench,search",
        help="comma-separated stages to run, of tests, bench, search (the dataset is built when bench or search runs)",
    )
    parser.add_argument("--num-workers", type=int, default=None, help="data workers of every training run (default: half the cores, at most 8; --smoke 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="the benchmark's batch (default 128, --smoke 8)")
    parser.add_argument("--timed-steps", type=int, default=None, help="steps timed after the warm-up (default 50, --smoke 4)")
    parser.add_argument("--pictures", type=int, default=None, help="synthetic pictures (default 8192, --smoke 64); also caps the search")
    parser.add_argument("--search-start", type=int, default=None, help="the search's first batch (default 1024, --smoke 8)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    options = parser.parse_args(argv)
    stages = [s.strip() for s in options.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - {"tests", "bench", "search"})
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from tests, bench, search")
    options.stages = stages
    return options


def main(argv):
    options = parse_args(argv)
    mode = "smoke" if options.smoke else "full"
    settings = dict(MODES[mode])
    for key in ("batch_size", "timed_steps", "pictures", "search_start"):
        if getattr(options, key) is not None:
            settings[key] = getattr(options, key)
    budget = Budget(options.budget if options.budget is not None else settings["budget"])
    timeouts = settings["timeouts"]
    out_path = options.out or default_out_path()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_path.with_suffix(".log")
    log_path.write_text("", encoding="utf-8")

    def log(text):
        with open(log_path, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)

    import torch

    cuda = torch.cuda.is_available()
    if cuda and settings.get("cuda_bench_models"):
        settings["vision_model"], settings["text_model"] = settings["cuda_bench_models"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    num_workers = options.num_workers if options.num_workers is not None else (1 if options.smoke else max(1, min(8, cores // 2)))
    gpu = gpu_properties() if cuda else {}
    results = {
        "mode": mode,
        "device": (f"{gpu.get('name', 'CUDA device')}, {cores} cores" if cuda else f"CPU ({cores} cores), no CUDA"),
        "gpu_memory_mib": gpu.get("memory_mib"),
        # data workers hand batches over in shared memory: a small /dev/shm fails the runs ("Bus error")
        "dev_shm_mib": round(shutil.disk_usage("/dev/shm").total / 2**20) if os.path.isdir("/dev/shm") else None,
        "cuda": cuda,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "budget_s": budget.deadline - budget.started,
        "settings": {k: v for k, v in settings.items() if k not in ("timeouts", "reserve", "cuda_bench_models")},
        "stages": {},
    }
    try:
        from importlib import metadata

        results["cn_clip"] = metadata.version("cn_clip")
    except Exception:
        results["cn_clip"] = None

    def save():
        results["wall_s"] = round(budget.elapsed(), 1)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, out_path)

    # time each later stage is left at least, so an earlier one cannot eat it
    reserve = settings["reserve"]
    keep_for = {"tests": 0.0, "bench": 0.0}
    if "search" in options.stages:
        keep_for["bench"] += reserve["search"]
        keep_for["tests"] += reserve["search"]
    if "bench" in options.stages:
        keep_for["tests"] += (3 if cuda else 2) * reserve["variant"]
    if "bench" in options.stages or "search" in options.stages:
        keep_for["tests"] += reserve["dataset"]

    scratch = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    # torchrun gives its workers OMP_NUM_THREADS=1 unless it is set: on a GPU every variant gets the
    # same (torchrun's), on a CPU the launcher's runs keep torch's default
    threads = int(os.environ.get("OMP_NUM_THREADS", "1")) if cuda else None
    results["omp_num_threads"] = threads
    workspace = Workspace(scratch, sys.executable, log, threads=threads)
    print(f"gpu_check ({mode}) on {results['device']}, budget {results['budget_s']:.0f} s; results: {out_path}", flush=True)
    try:
        if "tests" in options.stages:
            timeout = budget.timeout(timeouts["tests"], keep=keep_for["tests"])
            print(f"[{budget.elapsed():5.0f} s] tests (timeout {timeout:.0f} s)", flush=True)
            results["stages"]["tests"] = stage_tests(workspace, timeout, cuda)
            save()

        dataset = None
        if "bench" in options.stages or "search" in options.stages:
            print(f"[{budget.elapsed():5.0f} s] dataset: {settings['pictures']} pictures at {settings['image_size']} px", flush=True)
            started = time.monotonic()
            try:
                dataset, summary = build_synthetic_dataset(scratch / "data", settings["pictures"], settings["image_size"])
                pairs = summary["splits"]["train"]["pairs"]
                results["stages"]["dataset"] = {
                    "status": "ok",
                    "pairs": pairs,
                    "image_size": settings["image_size"],
                    "wall_s": round(time.monotonic() - started, 1),
                }
            except Exception as error:
                results["stages"]["dataset"] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
            save()

        if "bench" in options.stages:
            if dataset is None:
                results["stages"]["bench"] = {"status": "skipped", "reason": "no dataset"}
            else:
                print(f"[{budget.elapsed():5.0f} s] bench: {', '.join(VARIANTS)}", flush=True)
                results["stages"]["bench"] = stage_bench(
                    workspace, settings, dataset, cuda, num_workers, budget, timeouts["variant"], keep_for["bench"]
                )
            save()

        if "search" in options.stages:
            if dataset is None:
                results["stages"]["search"] = {"status": "skipped", "reason": "no dataset"}
            elif budget.timeout(timeouts["search"]) < 20:
                results["stages"]["search"] = {"status": "skipped", "reason": "time budget spent"}
            else:
                print(f"[{budget.elapsed():5.0f} s] search: {settings['search_vision_model']} with --grad-checkpointing", flush=True)
                results["stages"]["search"] = stage_search(
                    workspace, settings, dataset, pairs, num_workers, budget, timeouts["search"], timeouts["trial"]
                )
            save()
    finally:
        save()
        if options.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(markdown_report(results))
    print()
    print(f"JSON: {out_path}; every run's output: {log_path}")
    failed = [name for name, stage in results["stages"].items() if stage.get("status") not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
