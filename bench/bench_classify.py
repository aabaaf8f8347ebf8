"""Classifying a picture among all 1025 Pokemon: cached name embeddings against the seed's way.

    python bench/bench_classify.py                    # ViT-B-16 + RoBERTa-wwm-ext-base-chinese, CPU
    python bench/bench_classify.py --vision-model ViT-T-8-64 --text-model RBT-Tiny-chinese   # quick
    python bench/bench_classify.py --device cuda

Random weights (speed does not depend on them), the model loaded once, measured side by side in one
run on the same picture and names:
- seed's way: every call runs ``model(image, tokenize(all names))`` and a softmax, as the seed's
  README does, so all 1025 names are encoded again for each picture;
- first call: ``Classifier`` with an empty cache (names encoded once, padding columns trimmed,
  embeddings written beside the checkpoint);
- cached call: a new ``Classifier`` on the same checkpoint (reads the cache: file digest memo, one
  small tensor file) plus classifying the picture;
- batch: pictures per second classifying many pictures with the cached names.
Target: cached call >= 20x faster than the seed's way.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_picture(seed, size=96):
    """A sprite-like RGBA picture: coloured blobs on a transparent background."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    picture = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(6, size // 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256), 255))
    return picture


def timed(function, repeats):
    times = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vision-model", default="ViT-B-16")
    parser.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed-repeats", type=int, default=1, help="calls the seed's way (slow on a CPU)")
    parser.add_argument("--cached-repeats", type=int, default=5)
    parser.add_argument("--batch-pictures", type=int, default=16, help="pictures for the batch throughput")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    import torch
    from cn_clip.clip import tokenize
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon.checkpoint import load_checkpoint, model_config_for, save_model
    from cn_clip_pokemon.images import composite_on_white, fit_square
    from cn_clip_pokemon.classify import Classifier, candidate_names

    names = candidate_names()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"model {args.vision_model}@{args.text_model} (random weights), {len(names)} names")

    with tempfile.TemporaryDirectory(prefix="bench-classify-") as folder:
        config = model_config_for(args.vision_model, args.text_model)
        torch.manual_seed(0)
        started = time.perf_counter()
        path = save_model(CLIP(**config["model_info"]), Path(folder) / "epoch_latest.pt", config)
        print(f"checkpoint written in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
        started = time.perf_counter()
        loaded = load_checkpoint(path, device=args.device)
        print(f"checkpoint loaded in {time.perf_counter() - started:.1f} s (the same for both ways, not in the ratios)")
        model, preprocess = loaded.model, loaded.preprocess
        device = next(model.parameters()).device
        picture = make_picture(0)
        # the same pixels both ways (transparency on white), so the answers can be compared
        same_pixels = fit_square(composite_on_white(picture), loaded.input_resolution)

        def seed_way():
            # the seed: upstream's preprocess, then model(image, text) with every name, every call
            image = preprocess(same_pixels).unsqueeze(0).to(device)
            text = tokenize(names).to(device)
            with torch.no_grad():
                image_features, text_features, scale = model(image, text)
                return (scale * image_features @ text_features.T).softmax(dim=-1)

        def synchronize():
            if device.type == "cuda":
                torch.cuda.synchronize()

        seed_time, (seed_probabilities, _) = timed(lambda: (seed_way(), synchronize()), args.seed_repeats)
        print(f"seed's way       {seed_time:8.3f} s per picture (encodes {len(names)} names + 1 picture every call)")

        started = time.perf_counter()
        Classifier(path, names=names, loaded=loaded, progress=False).classify_images([picture], top_k=5)
        synchronize()
        first_time = time.perf_counter() - started
        print(f"first call       {first_time:8.3f} s (empty cache: names encoded once and cached)")

        def cached_call():
            classifier = Classifier(path, names=names, loaded=loaded, progress=False)
            result = classifier.classify_images([picture], top_k=5)
            synchronize()
            return result

        cached_time, _ = timed(cached_call, args.cached_repeats)
        print(f"cached call      {cached_time:8.3f} s per picture (cache read + 1 picture encoded), median of {args.cached_repeats}")

        classifier = Classifier(path, names=names, loaded=loaded, progress=False)
        pictures = [make_picture(seed) for seed in range(args.batch_pictures)]
        classifier.classify_images(pictures[: args.batch_size], batch_size=args.batch_size)  # warm-up
        started = time.perf_counter()
        classifier.classify_images(pictures, batch_size=args.batch_size)
        synchronize()
        batch_rate = len(pictures) / (time.perf_counter() - started)
        seed_rate = 1 / seed_time
        print(f"batch            {batch_rate:8.2f} pictures/s ({len(pictures)} pictures, batches of {args.batch_size}); seed's way {seed_rate:.3f} pictures/s")
        print()
        ratio = seed_time / cached_time
        print(f"cached vs seed's way: {ratio:.1f}x faster per picture (target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
        print(f"first call vs seed's way: {seed_time / first_time:.1f}x (trimmed padding)")
        print(f"batch vs seed's way: {batch_rate / seed_rate:.1f}x pictures/s")
        # sanity: the same answer both ways
        seed_probabilities = seed_probabilities[0].cpu()
        ours = classifier.classify_images([picture], top_k=5)[0]
        same = [names[i] for i in seed_probabilities.topk(5).indices.tolist()] == [name for name, _ in ours]
        print(f"same top-5 names both ways: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
