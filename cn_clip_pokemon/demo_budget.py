"""The demo's training budget (--train-minutes): a probe of a few steps measures this machine's
speed, then the real run is launched with the step count that fits, so that upstream's cosine
schedule is planned for the steps that are actually trained; and what the report says of it."""
import json
import os
import time
from pathlib import Path

from cn_clip_pokemon.dataset_format import lmdb_dir
from cn_clip_pokemon.demo_recipes import recipe_flag, train_argv
from cn_clip_pokemon.demo_stages import run_stage


PROBE_STEPS = 30  # in all: split between the thread counts tried
MIN_STEPS = 10
# What an epoch's end costs, in training steps per validation batch: the validation itself, the
# checkpoint and the loaders' restart. Measured on 2 cores (AMD EPYC, AVX-512): 9-11 s between the last
# step of an epoch and the next beyond the steps' own time, with 32 validation batches at 0.32 s a step.
VALID_STEP_SHARE = 1.0
# The probe runs in the first steps; the whole run's steps took up to 13% longer than its probe on the same
# machine (0.310 -> 0.325 s; with framing's move and scale in the loader, 0.2085 -> 0.2363 s on 2 threads)
STEP_MARGIN = 1.15
PLAN_FILE = "training-plan.json"


def _split_batches(dataset, split, batch_size):
    """Batches per epoch of ``split`` as the pokemon dataset's sampler deals them (0 without the split)."""
    from cn_clip_pokemon.default_plugins.pokemon_dataset import pair_groups
    from cn_clip_pokemon.sampler import UniqueGroupBatchSampler

    lmdb = lmdb_dir(dataset, split)
    if not lmdb.is_dir():
        return 0
    groups = pair_groups(lmdb)
    return len(UniqueGroupBatchSampler(groups, batch_size=batch_size)) if groups else 0


def probe_seconds_per_step(metrics_file):
    """Seconds per training step between the first and the last logged step of a run (the first
    logged step, with the loader's and the model's start, left out)."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    logged = sorted((row["step"], row["time"], row.get("epoch")) for row in rows if row.get("split") == "train" and not row.get("epoch_end"))
    # within an epoch only: the time between epochs holds validation and the loader's restart
    pairs = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(logged, logged[1:]) if a[2] == b[2] and b[0] > a[0]]
    last = logged[-1][0] if logged else 0
    if not pairs:
        return None, last
    return sum(t for _, t in pairs) / sum(n for n, _ in pairs), last


def fit_steps(budget_seconds, spent_seconds, seconds_per_step, startup_seconds, planned_steps, steps_per_epoch, valid_batches):
    """The steps that fit what is left of the budget after the probe: the run's start-up and the
    validation after each epoch it starts taken off first; at most the recipe's planned steps, at
    least MIN_STEPS."""
    if seconds_per_step <= 0:
        return planned_steps
    left = budget_seconds - spent_seconds - startup_seconds
    steps_per_epoch = max(1, steps_per_epoch)
    validation = valid_batches * VALID_STEP_SHARE * seconds_per_step  # per epoch
    fitted = 0
    for epochs in range(1, -(-planned_steps // steps_per_epoch) + 1):  # the best over the epochs it may end in
        fitted = max(fitted, min(planned_steps, epochs * steps_per_epoch, int((left - epochs * validation) // seconds_per_step)))
    return max(min(MIN_STEPS, planned_steps), fitted)


def thread_candidates(recipe):
    """Intra-op thread counts the probe tries for ``recipe``: one, and every core this process may use,
    when it trains on the CPU and the user did not set OMP_NUM_THREADS (theirs is kept; ``[None]``, the
    environment as it is, then and off the CPU); one core: ``[1]``. One thread leaves a core to the data
    loader and to anything else running; all cores is faster on an idle machine (1.27-1.33x measured on
    2 cores, README's step profile) and several times slower on a busy one, so it is measured, not guessed."""
    from cn_clip_pokemon.files import available_cores

    if recipe_flag(recipe, "--device") != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return [None]
    cores = available_cores()
    return [1, cores] if cores > 1 else [1]


def _probe(recipe, args, dataset, epochs, probe_steps, environment, threads):
    """One probe run of ``probe_steps`` steps with ``threads`` intra-op threads (None: the environment's
    as it is): (seconds per step, its wall-clock seconds, the start-up seconds)."""
    import tempfile

    if threads is not None:
        environment = {**environment, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="cn-clip-pokemon-probe-") as logs:
        argv = train_argv(recipe, args, dataset, Path(logs), epochs)
        cut = argv.index("--val-data")
        del argv[cut:cut + 2]  # the probe trains only
        argv[argv.index("--log-interval") + 1] = "1"
        argv += ["--max-steps", str(probe_steps), "--save-epoch-frequency", "1000000"]
        what = f", {threads} thread{'s' if threads != 1 else ''}" if threads is not None else ""
        _, wall = run_stage(f"probe: {probe_steps} training steps to measure this machine's speed{what}", argv, environment=environment)
        seconds_per_step, probed = probe_seconds_per_step(Path(logs) / recipe["name"] / "metrics.jsonl")
    if seconds_per_step is None:
        seconds_per_step = wall / max(1, probed or probe_steps)
    return seconds_per_step, wall, max(0.0, wall - probe_steps * seconds_per_step)


def plan_training(recipe, args, dataset, epochs, budget_minutes, environment):
    """Probe this machine's speed with short runs of the recipe (one per thread count worth trying on
    the CPU), keep the fastest thread count, then fit the steps to the budget (``budget_minutes``
    None: the recipe's steps). Returns the plan (a dict, also
    written to the experiment's PLAN_FILE); its "environment" is what the real run is given."""
    batch_size = int(recipe_flag(recipe, "--batch-size"))
    steps_per_epoch = _split_batches(dataset, "train", batch_size)
    valid_batches = _split_batches(dataset, "valid", int(recipe_flag(recipe, "--valid-batch-size")))
    planned = steps_per_epoch * epochs
    candidates = thread_candidates(recipe)
    probe_steps = max(4, min(PROBE_STEPS // len(candidates), planned // 10))
    started = time.time()
    probes = {threads: _probe(recipe, args, dataset, epochs, probe_steps, environment, threads) for threads in candidates}
    threads = min(candidates, key=lambda count: probes[count][0])
    seconds_per_step, _, startup = probes[threads]
    spent = time.time() - started
    steps = planned
    if budget_minutes:
        steps = fit_steps(budget_minutes * 60, spent, seconds_per_step * STEP_MARGIN, startup, planned, steps_per_epoch, valid_batches)
    plan = {
        "budget_minutes": budget_minutes,
        "planned_steps": planned,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "threads": threads,
        "environment": {**environment, **({"OMP_NUM_THREADS": str(threads)} if threads is not None else {})},
        "probe": {
            "steps": probe_steps, "seconds": round(spent, 1), "seconds_per_step": round(seconds_per_step, 4),
            **({"seconds_per_step_by_threads": {str(count): round(probes[count][0], 4) for count in candidates}}
               if len(candidates) > 1 else {}),
        },
    }
    with_threads = f" with {threads} thread{'s' if threads != 1 else ''}" if len(candidates) > 1 else ""
    if budget_minutes:
        fits = "the recipe's steps fit" if steps == planned else f"{steps} of the recipe's {planned} steps fit"
        print(f"{seconds_per_step:.3f} s a step here{with_threads}: {fits} in the {budget_minutes:g}-minute training budget", flush=True)
    else:
        print(f"{seconds_per_step:.3f} s a step here{with_threads}: no training budget, the recipe's {planned} steps", flush=True)
    return plan


def _training_seconds_per_step(metrics_file):
    """Seconds per step over the logged steps of a run's metrics.jsonl (None without it)."""
    if not Path(metrics_file).is_file():
        return None
    return probe_seconds_per_step(metrics_file)[0]


def read_plan(path):
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def checkpoint_progress(path):
    """``(epoch, step)`` a training checkpoint records, loaded once; ``(0, 0)`` when it cannot be read."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return int(saved.get("epoch", 0)), int(saved.get("step", 0))
    except Exception:
        return 0, 0


def training_summary(plan, checkpoint, metrics_file, train_seconds):
    """The report's training figures: the budget (None without one), the steps planned and done,
    seconds per step measured while training (and by the probe)."""
    done = checkpoint_progress(checkpoint)[1] if Path(checkpoint).exists() else None
    # measured between logged steps of one epoch; a run too short for two of them: the probe's figure
    seconds_per_step = _training_seconds_per_step(metrics_file) or (plan or {}).get("probe", {}).get("seconds_per_step")
    return {
        "budget_minutes": plan.get("budget_minutes") if plan else None,
        "planned_steps": plan.get("planned_steps") if plan else None,
        "steps": done,
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step else None,
        "threads": plan.get("threads") if plan else None,
        "probe": plan.get("probe") if plan else None,
        "seconds": round(train_seconds, 1) if train_seconds else None,
    }
