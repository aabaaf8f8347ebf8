"""The demo's time budget: --minutes for the whole demo (the default), --train-minutes for training
alone. A probe of a few steps measures this machine's speed, then the real run is launched with the
step count that fits and a time limit at the budget's edge, its cosine schedule following the clock
(patches/0032), so that the schedule ends where training ends; and what the report says of it.

With --minutes, training gets what the stages before it (fetching, building) left of the budget, less
an estimate of the stages after it made from the same probe (after_training_seconds), so the whole demo
ends within its minutes on a slower machine too: there every stage is slower, and training gives way."""
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cn_clip_pokemon.dataset_format import lmdb_dir
from cn_clip_pokemon.demo_recipes import recipe_flag, train_argv
from cn_clip_pokemon.demo_stages import run_stage


PROBE_STEPS = 30  # in all: split between the thread counts tried
MIN_STEPS = 10
# What an epoch's end costs, in training steps per validation batch: the validation itself, the
# checkpoint and the loaders' restart. Measured on 2 cores (AMD EPYC, AVX-512, this recipe): 3 s from an
# epoch's last step to its validation's result and 0-2 s more to the next epoch's steps, with 31
# validation batches at 0.25 s a step (earlier recipes: 9-11 s with 32 batches at 0.32 s).
VALID_STEP_SHARE = 0.5
# The probe runs in the first steps; the whole run's steps took from 8% less to 24% longer than its probe
# on the same machine (0.229 -> 0.210 s; 0.2085 -> 0.2363 s with framing's move and scale on 2 threads;
# 0.217 -> 0.256 s in a 9-minute demo). The run's --max-minutes (patches/0032) is the hard edge and its
# learning-rate schedule follows the clock when the clock is further along, so planning more steps than
# fit costs nothing, and the steps are planned for a speed a third faster than the probe's: a run as fast
# as its probe or slower is ended by the limit with its schedule done, one up to a third faster uses its
# time too. A probe slowed by other work on the machine no longer shortens the run: one on one core, beside
# other work on the other core, measured 0.438 s a step against the run's 0.362 s, planned 778 steps for a
# speed 10% faster and ended 1.0 minute before its budget (AMD EPYC avx512_bf16 avx512f, AVX2 kernels).
STEP_MARGIN = 0.75
# From the limit to the end of the training process: importing before main's clock starts, the
# checkpoint's write, the exit (besides the final validation, counted from the probe's speed). With 5 s
# the training stage ended 2.6 s after its share of the budget (AMD EPYC, AVX-512, 2 cores).
END_SECONDS = 8.0
PLAN_FILE = "training-plan.json"
# The stages after training (two evaluations, the grid of predictions, the question asked again) are
# four processes that each start about as the question's `classify` before training did (Python, torch,
# the model, one picture; the probe's start-up, which also builds the training loader, where there was no
# question, or when it was shorter) and encode the held-out pictures once: a forward pass of the image
# tower, a fraction of a training step's time per batch (README's step profile: 45-82 of 186-264 ms).
# Counted as five starts: with four probe start-ups the estimate was 29-48 s against 28-40 s measured in
# five runs (AMD EPYC, 2 cores), 9 s short in one of them; with five on one core 61 s against 34 s.
AFTER_STAGES = 5
FORWARD_SHARE = 0.3
# When fetching and building took most of a --minutes budget (a slow network, a busy machine), training
# still gets this share of it, and the demo says it will run over.
MIN_TRAINING_SHARE = 0.5


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


def after_training_seconds(pictures, batch_size, seconds_per_step, startup_seconds):
    """An estimate of the demo's stages after training: AFTER_STAGES process starts (``startup_seconds``
    each, as the probe measured) and ``pictures`` held-out pictures encoded at ``batch_size``."""
    return AFTER_STAGES * startup_seconds + pictures / max(1, batch_size) * seconds_per_step * FORWARD_SHARE


def training_seconds(demo_seconds, spent_before, after_seconds):
    """What the whole demo's budget (``demo_seconds``) leaves to training, from the probe's start, once
    ``spent_before`` seconds went to the stages before it and ``after_seconds`` are kept for those after
    it; at least MIN_TRAINING_SHARE of the budget."""
    return max(MIN_TRAINING_SHARE * demo_seconds, demo_seconds - spent_before - after_seconds)


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


def plan_training(recipe, args, dataset, epochs, budget, environment):
    """Probe this machine's speed with short runs of the recipe (one per thread count worth trying on
    the CPU), keep the fastest thread count, then fit the steps to ``budget`` (a Budget; None: the
    recipe's steps). Returns the plan (a dict, also written to the experiment's PLAN_FILE); its
    "environment" is what the real run is given."""
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
    train_seconds = after = limit = None
    if budget:
        train_seconds = budget.minutes * 60
        if budget.whole_demo:
            before = started - budget.started  # fetching, building, the question before training
            process = min(startup, budget.process_seconds) if budget.process_seconds else startup
            after = after_training_seconds(budget.after_pictures, batch_size, seconds_per_step, process)
            train_seconds = training_seconds(budget.minutes * 60, before, after)
        steps = fit_steps(train_seconds, spent, seconds_per_step * STEP_MARGIN, startup, planned, steps_per_epoch, valid_batches)
        # the hard edge: what is left once the final validation and the process's end are kept
        # (never below the time MIN_STEPS take, twice over, after the start-up: the fewest steps a run trains)
        limit = max(startup + 2 * MIN_STEPS * seconds_per_step,
                    train_seconds - spent - valid_batches * VALID_STEP_SHARE * seconds_per_step - END_SECONDS)
    plan = {
        "budget_minutes": budget.minutes if budget else None,
        "budget_of": budget.kind if budget else None,
        "planned_steps": planned,
        "steps": steps,
        "time_limit_minutes": round(limit / 60, 3) if budget else None,  # the run's --max-minutes
        "steps_per_epoch": steps_per_epoch,
        "threads": threads,
        "environment": {**environment, **({"OMP_NUM_THREADS": str(threads)} if threads is not None else {})},
        "probe": {
            "steps": probe_steps, "seconds": round(spent, 1), "seconds_per_step": round(seconds_per_step, 4),
            "startup_seconds": round(startup, 1),
            **({"seconds_per_step_by_threads": {str(count): round(probes[count][0], 4) for count in candidates}}
               if len(candidates) > 1 else {}),
        },
        **({"before_training_seconds": round(before, 1), "training_budget_seconds": round(train_seconds, 1),
            "after_training_estimate_seconds": round(after, 1), "process_seconds": round(process, 1)}
           if budget and budget.whole_demo else {}),
    }
    with_threads = f" with {threads} thread{'s' if threads != 1 else ''}" if len(candidates) > 1 else ""
    if not budget:
        print(f"{seconds_per_step:.3f} s a step here{with_threads}: no time budget, the recipe's {planned} steps", flush=True)
        return plan
    fits = "the recipe's steps fit" if steps == planned else f"{steps} of the recipe's {planned} steps fit"
    if budget.whole_demo:
        over = before + train_seconds + after > budget.minutes * 60 + 1  # training kept MIN_TRAINING_SHARE
        print(
            f"{seconds_per_step:.3f} s a step here{with_threads}: {fits} in {train_seconds / 60:.1f} minutes of training "
            f"(the {budget.minutes:g}-minute demo budget, less {before / 60:.1f} minutes spent before training and about "
            f"{after / 60:.1f} for the evaluations after it)"
            + (f"; the stages before training took most of the budget, so training keeps {MIN_TRAINING_SHARE:.0%} of it "
               "and the demo will run over" if over else ""),
            flush=True,
        )
    else:
        print(f"{seconds_per_step:.3f} s a step here{with_threads}: {fits} in the {budget.minutes:g}-minute training budget", flush=True)
    return plan


@dataclass(frozen=True)
class Budget:
    """The demo's time budget: ``minutes`` for the whole demo (``whole_demo``; it started at ``started``,
    a time.time(), and ``after_pictures`` held-out pictures are encoded after training by processes that
    start as one that took ``process_seconds`` did) or for training alone."""

    minutes: float
    whole_demo: bool
    started: float = None
    after_pictures: int = 0
    process_seconds: float = None

    @property
    def kind(self):
        """"demo" or "training": what the minutes cover (a plan's "budget_of")."""
        return "demo" if self.whole_demo else "training"

    def same_as(self, plan):
        """Whether ``plan`` (a PLAN_FILE's dict) was made for a budget like this one."""
        return bool(plan) and plan.get("budget_minutes") == self.minutes and plan.get("budget_of", "training") == self.kind


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
        "budget_of": plan.get("budget_of") if plan else None,
        **{key: plan[key] for key in ("training_budget_seconds", "after_training_estimate_seconds", "process_seconds", "time_limit_minutes")
           if plan and key in plan},
        "budget_steps": plan.get("steps") if plan else None,  # what the plan fitted; fewer done: the time limit stopped the run
        "planned_steps": plan.get("planned_steps") if plan else None,
        "steps": done,
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step else None,
        "threads": plan.get("threads") if plan else None,
        "probe": plan.get("probe") if plan else None,
        "seconds": round(train_seconds, 1) if train_seconds else None,
    }
