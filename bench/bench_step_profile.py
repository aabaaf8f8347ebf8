"""Where a training step's time goes on the CPU, per stage, for the demo's tiny recipe.

    python bench/bench_step_profile.py                          # sprites #1-200, 4 frames, the recipe's size
    python bench/bench_step_profile.py --dataset pokemon-demo/datasets/pokemon --rounds 5
    python bench/bench_step_profile.py --threads 1 2 --attention default sdpa --precision fp32 bf16
    python bench/bench_step_profile.py --isa avx2   # an AVX-512 CPU running the kernels an AVX2-only CPU runs
    python bench/bench_step_profile.py --threads 1 --attention default --precision fp32 --compile none inductor

The step is the demo's (demo_recipes.TINY): upstream's CLIP built from its vision config (ViT-T-8-32) and
RBT-Tiny-chinese as upstream's main builds it, batch 128 of its pictures (32 px), context 12, its --mask-ratio,
AdamW with upstream's two parameter groups, the contrastive loss of upstream's get_loss, the
pokemon-augmented training loader with the launcher's CPU worker count. Each step is timed per
stage: data (waiting for the loader's next batch), image tower forward, text tower forward, loss,
backward, optimizer (zero_grad, step, logit_scale clamp).

Every combination of --threads (torch intra-op threads), --attention (default: nn.MultiheadAttention
and BERT's softmax; sdpa: scaled_dot_product_attention in both towers, what --use-flash-attention
builds) and --precision (fp32; bf16: autocast, what --precision amp is on a CPU with native bf16
and only measured there unless --force-bf16) gets its own model and optimizer, all with the same
initial weights, and they run side by side in one process: each round runs --steps steps of every
combination in turn (the order rotating), so load from other programs falls on all of them alike.
Printed: ms per stage, median over rounds (of each round's median step) with the spread (min-max),
and each combination's step time against the first one (the demo's: 1 thread, default attention,
fp32 here). The CPU model, its vector/bf16 flags and the load average are printed with the table.

--compile inductor adds combinations whose image and text towers are torch.compile'd (the default
inductor backend, which builds C++ kernels with the machine's compiler); the seconds their untimed first
steps took (the compilation) are printed beside the table, since a run pays them once before it gains.
"""
import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the demo's setting; --threads sets each run's count
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import build_bench_dataset  # noqa: E402
from machine import CPU_FLAGS, cpu_description, load_average  # noqa: E402

STAGES = ("data", "image_forward", "text_forward", "loss", "backward", "optimizer", "step")
# --isa avx2: the environment variables that cap each kernel library at AVX2
ISA_CAPS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
ISA_MARKER = "BENCH_STEP_PROFILE_ISA"


def recipe_args(dataset, num_workers):
    """Upstream's parsed arguments for the demo's training flags on ``dataset``."""
    from cn_clip.training.params import parse_args

    from cn_clip_pokemon.dataset_format import lmdb_dir
    from cn_clip_pokemon.demo_recipes import TINY

    flags = [flag for flag in TINY["train_flags"]]
    flags[flags.index("--device") + 1] = "cpu"
    argv = ["--train-data", str(lmdb_dir(dataset, "train")), "--logs", "unused", "--name", "profile",
            "--num-workers", str(num_workers), *flags]
    args = parse_args(argv)
    args.device = __import__("torch").device("cpu")
    return args


def build_model(args, sdpa, compiled=False):
    """Upstream's CLIP as main builds it (the merged vision and text configs), with its optimizer;
    ``compiled``: its two towers torch.compile'd."""
    import torch
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon.model_config_resolver import model_info_for

    info = dict(model_info_for(args.vision_model, args.text_model))
    info.pop("use_flash_attention", None)
    torch.manual_seed(0)
    model = CLIP(**info, use_flash_attention=sdpa).train()
    if compiled:
        model.visual, model.bert = torch.compile(model.visual), torch.compile(model.bert)
    from bench_training import upstream_adamw

    optimizer = upstream_adamw(model, args)
    return model, optimizer


class Batches:
    """The training loader, restarted at the end of an epoch; ``next()`` times the wait."""

    def __init__(self, args):
        from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_augmented_dataset

        self.args = args
        self.data = pokemon_augmented_dataset.get_dataset(args, is_train=True, max_txt_length=args.context_length, epoch_id=0)
        self.epoch = 0
        self.iterator = iter(self.data.dataloader)

    def next(self):
        started = time.perf_counter()
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.epoch += 1
            self.data.sampler.set_epoch(self.epoch)  # another order each epoch, as upstream's training loop
            self.iterator = iter(self.data.dataloader)
            batch = next(self.iterator)
        return batch, time.perf_counter() - started


def timed_step(model, optimizer, batches, args, precision):
    import torch
    import torch.nn.functional as F

    (images, texts, _), data_seconds = batches.next()
    marks = [time.perf_counter()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        image_features = model.encode_image(images, args.mask_ratio)
        marks.append(time.perf_counter())
        text_features = model.encode_text(texts)
        marks.append(time.perf_counter())
        # upstream's CLIP.forward and get_loss
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logit_scale = model.logit_scale.exp().mean()
        logits_per_image = logit_scale * image_features @ text_features.t()
        truth = torch.arange(len(logits_per_image))
        loss = (F.cross_entropy(logits_per_image, truth) + F.cross_entropy(logits_per_image.t(), truth)) / 2
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)
    marks.append(time.perf_counter())
    stages = dict(zip(STAGES[1:6], (b - a for a, b in zip(marks, marks[1:]))))
    stages["data"] = data_seconds
    stages["step"] = data_seconds + marks[-1] - marks[0]
    return stages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=None, help="a dataset folder made by build-dataset (default: sprites #1-200, 4 frames, the recipe's picture size)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts (default 1 2)")
    parser.add_argument("--attention", nargs="+", choices=["default", "sdpa"], default=["default", "sdpa"])
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="bf16 (autocast) is measured only where the CPU has native bf16, unless --force-bf16")
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 autocast even without avx512_bf16/amx_bf16")
    parser.add_argument("--compile", nargs="+", choices=["none", "inductor"], default=["none"],
                        help="inductor: also measure the towers torch.compile'd (default none)")
    parser.add_argument("--num-workers", type=int, default=None, help="data workers (default: the launcher's CPU default)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per combination first (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per combination and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: cap PyTorch's, oneDNN's and MKL's kernels at AVX2 (an AVX-512 CPU then runs the "
                             "code an AVX2-only CPU runs, bf16 not measured); the clock and caches stay this CPU's")
    options = parser.parse_args(argv)
    if options.isa != os.environ.get(ISA_MARKER, "native"):
        # the caps are read when torch loads: start again with them set
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)],
                  dict(os.environ, **ISA_CAPS[options.isa], **{ISA_MARKER: options.isa}))

    import torch

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip_pokemon.demo_recipes import TINY
    from cn_clip_pokemon.launcher import cpu_worker_count

    model_name, flags, _ = cpu_description()
    native_bf16 = options.isa == "native" and any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))
    if options.isa != "native":
        flags = [f"{flag} (capped: --isa {options.isa})" if flag != options.isa else flag for flag in flags]
    precisions = [p for p in options.precision if p == "fp32" or native_bf16 or options.force_bf16]
    skipped = [p for p in options.precision if p not in precisions]
    workers = cpu_worker_count() if options.num_workers is None else options.num_workers

    with tempfile.TemporaryDirectory() as scratch:
        dataset = options.dataset
        if dataset is None:
            size = TINY["image_size"]
            print(f"building the profile dataset (sprites #1-200, 4 frames, {size} px)...", flush=True)
            dataset = build_bench_dataset(Path(scratch), numbers=range(1, 201), frames=4, image_size=size, bench="bench_step_profile")
        args = recipe_args(dataset, workers)
        combos = list(itertools.product(options.threads, options.attention, precisions, options.compile))
        print(f"CPU: {model_name}; flags: {' '.join(flags) or 'none of ' + ' '.join(CPU_FLAGS)}; {os.cpu_count()} CPUs", flush=True)
        if skipped:
            print(f"  {', '.join(skipped)} not measured: no native bf16 on this CPU (there --precision amp trains fp32; --force-bf16 measures it anyway)")
        print(
            f"{args.vision_model} + {args.text_model}, batch {args.batch_size}, mask ratio {args.mask_ratio}, context "
            f"{args.context_length}, pokemon-augmented, {workers} data worker(s), torch {torch.__version__}; "
            f"{options.rounds} round(s) of {options.steps} step(s) per combination after {options.warmup}",
            flush=True,
        )
        print(f"load average before: {load_average()}", flush=True)
        batches = Batches(args)
        models = {combo: build_model(args, combo[1] == "sdpa", combo[3] == "inductor") for combo in combos}
        first_steps = {}  # the untimed first steps' seconds: with --compile inductor, the compilation
        for combo in combos:
            torch.set_num_threads(combo[0])
            started = time.perf_counter()
            for _ in range(max(1, options.warmup)):
                timed_step(*models[combo], batches, args, combo[2])
            first_steps[combo] = time.perf_counter() - started
        times = {combo: {stage: [] for stage in STAGES} for combo in combos}
        for round_number in range(options.rounds):
            shift = round_number % len(combos)
            for combo in combos[shift:] + combos[:shift]:
                torch.set_num_threads(combo[0])
                steps = [timed_step(*models[combo], batches, args, combo[2]) for _ in range(options.steps)]
                for stage in STAGES:
                    times[combo][stage].append(statistics.median(step[stage] for step in steps))
            print(f"  round {round_number + 1}/{options.rounds} done, load average {load_average()}", flush=True)

    def name(combo):
        return f"{combo[0]} thr {combo[1]} {combo[2]}" + (" compiled" if combo[3] == "inductor" else "")

    def cell(values):
        return f"{statistics.median(values) * 1000:.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"

    print()
    print(f"ms per step, median over rounds (min-max); CPU {model_name} [{' '.join(flags)}]; load average after: {load_average()}")
    width = max(len(name(c)) for c in combos) + 2
    print(f"{'':{width}s}" + "".join(f"{stage:>19s}" for stage in STAGES) + f"{'vs first':>10s}")
    base = statistics.median(times[combos[0]]["step"])
    for combo in combos:
        ratio = base / statistics.median(times[combo]["step"])
        print(f"{name(combo):{width}s}" + "".join(f"{cell(times[combo][stage]):>19s}" for stage in STAGES) + f"{ratio:9.2f}x")
    print("(vs first: the first row's step time / this row's; above 1 is faster)")
    print("untimed first steps (with --compile inductor: the compilation), s: "
          + ", ".join(f"{name(c)} {first_steps[c]:.1f}" for c in combos))
    if options.json:
        options.json.write_text(json.dumps({
            "cpu": model_name, "flags": flags, "load_average_after": load_average(),
            "rows": {name(c): {s: [round(v * 1000, 1) for v in times[c][s]] for s in STAGES} for c in combos},
            "first_steps_seconds": {name(c): round(first_steps[c], 1) for c in combos},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
