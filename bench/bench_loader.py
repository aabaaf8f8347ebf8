"""What the demo's training loader costs in CPU per batch, as upstream reads samples and as this release does.

    python bench/bench_loader.py                      # sprites #1-200, 4 frames, framed, the recipe's size
    python bench/bench_loader.py --dataset pokemon-demo/datasets/pokemon --rounds 7

The loader is the demo's (the pokemon-augmented dataset on the recipe's flags: upstream's LMDBDataset,
SpriteAugment, upstream's transform, the unique-name batches), run in this process (no worker), so its
CPU time per batch is what a training step waits for on one core and what the loader's worker takes from
the training threads on two. Two loaders over the same dataset, in turn each round (the order rotating):

- "as upstream": each caption tokenized every time its pair is read (upstream's LMDBDataset), upstream's
  transform as torchvision composes it, and one torch.rand call per random number of the augmentation;
- "this release": a caption tokenized once per dataset (patches/0033), the same transform's numbers made
  directly for a picture already at the model's size (PictureToTensor), random numbers drawn 64 at a time.

Printed per stage, ms of CPU per batch, median over rounds (min-max): augmentation (SpriteAugment),
upstream's transform (resize, tensor, normalise), and the rest (the LMDB read, the PNG decode, the
caption's tokens, the batch's collation), with the CPU model, its flags and the load average.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_description, load_average  # noqa: E402

STAGES = ("augmentation", "upstream transform", "the rest", "batch")
VARIANTS = ("as upstream", "this release")


class NoCache(dict):
    """A caption cache that keeps nothing: upstream's LMDBDataset tokenizes every read."""

    def __setitem__(self, key, value):
        pass


class Timed:
    """A picture transform whose CPU time is added to ``totals[stage]``."""

    def __init__(self, transform, totals, stage):
        self.transform, self.totals, self.stage = transform, totals, stage

    def __call__(self, image):
        started = time.process_time()
        result = self.transform(image)
        self.totals[self.stage] += time.process_time() - started
        return result


def make_loader(dataset, variant):
    """The demo's training loader on ``dataset``, as ``variant`` reads samples, and its stage totals."""
    from bench_step_profile import recipe_args
    from torchvision.transforms import Compose

    from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_augmented_dataset

    args = recipe_args(dataset, 0)
    data = pokemon_augmented_dataset.get_dataset(args, is_train=True, max_txt_length=args.context_length, epoch_id=0)
    totals = dict.fromkeys(STAGES, 0.0)
    augment, to_tensor = data.dataset.transform.transforms
    if variant == "as upstream":
        data.dataset.tokenized = NoCache()
        to_tensor = getattr(to_tensor, "upstream", to_tensor)
        augment.DRAWS = 1
    data.dataset.transform = Compose([Timed(augment, totals, "augmentation"), Timed(to_tensor, totals, "upstream transform")])
    return data, totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=None, help="a dataset folder made by build-dataset (default: sprites #1-200, 4 frames, framed, 32 px)")
    parser.add_argument("--batches", type=int, default=20, help="batches per loader and round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    options = parser.parse_args(argv)

    import torch
    from bench_training import build_bench_dataset

    from cn_clip_pokemon import patching
    from cn_clip_pokemon.demo_recipes import TINY, recipe_flag

    patching.install()
    torch.set_num_threads(1)
    model_name, flags, _ = cpu_description()
    with tempfile.TemporaryDirectory() as scratch:
        dataset = options.dataset
        if dataset is None:
            print("building the bench dataset (sprites #1-200, 4 frames, framed, 32 px)...", flush=True)
            dataset = build_bench_dataset(Path(scratch), numbers=range(1, 201), frames=4, image_size=TINY["image_size"],
                                          framing=TINY["framing"], bench="bench_loader")
        print(f"CPU: {model_name}; flags: {' '.join(flags)}; {os.cpu_count()} CPUs; load average {load_average()}", flush=True)
        loaders = {variant: make_loader(dataset, variant) for variant in VARIANTS}
        iterators = {variant: iter(loaders[variant][0].dataloader) for variant in VARIANTS}
        for variant in VARIANTS:
            next(iterators[variant])  # the first batch opens the LMDB and fills the caches: not timed
        figures = {variant: {stage: [] for stage in STAGES} for variant in VARIANTS}
        for round_number in range(options.rounds):
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                data, totals = loaders[variant]
                for stage in STAGES:
                    totals[stage] = 0.0
                started = time.process_time()
                for _ in range(options.batches):
                    try:
                        next(iterators[variant])
                    except StopIteration:
                        iterators[variant] = iter(data.dataloader)
                        next(iterators[variant])
                batch = (time.process_time() - started) / options.batches
                measured = {stage: totals[stage] / options.batches for stage in STAGES[:2]}
                measured["the rest"] = batch - sum(measured.values())
                measured["batch"] = batch
                for stage in STAGES:
                    figures[variant][stage].append(measured[stage] * 1000)
            print(f"  round {round_number + 1}/{options.rounds} done, load average {load_average()}", flush=True)

    def cell(values):
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    print()
    print(f"ms of CPU per batch of {recipe_flag(TINY, '--batch-size')} pictures, median over "
          f"{options.rounds} rounds of {options.batches} batches (min-max); CPU {model_name}; load average after {load_average()}")
    print(f"{'':14s}" + "".join(f"{stage:>22s}" for stage in STAGES))
    for variant in VARIANTS:
        print(f"{variant:14s}" + "".join(f"{cell(figures[variant][stage]):>22s}" for stage in STAGES))
    ratios = [a / b for a, b in zip(figures["as upstream"]["batch"], figures["this release"]["batch"])]
    print(f"as upstream / this release, per round: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
