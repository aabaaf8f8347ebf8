"""`evaluate --perturb`: how the model holds up on pictures the way users take them, not sprites on white.

Each change is applied to the original picture file a test picture was built from (its transparency
kept), and the result then goes through the one picture path every door uses
(images.PicturePreprocess: on white, cropped to its subject when the checkpoint was trained on
pictures built with --framing subject, padded square, resized, upstream's transform). So a background
replaces white only where the sprite is transparent, and "clean" is the same original through the
same path with no change. The changes (a picture's position in the split picks the side of a
rotation and the photo-like background, so a run is repeatable):

- jpeg30: on white, saved as JPEG at quality 30 and read back;
- half, quarter: on white, shrunk to 1/2 or 1/4 of its side (bicubic), then back up to its size;
- blur: on white, Gaussian blur of radius side/64 (1.5 px for a 96 px sprite);
- grey-bg, black-bg, photo-bg: the transparent pixels on grey (128), on black, or on a photo-like
  background (a smooth random colour field with noise);
- crop80: the central 80% (of each side) of the sprite's visible box, cutting into the Pokemon;
- rotate15: turned by 15 degrees, either way, the corners transparent;
- canvas: on a white canvas of twice the side, off centre (a quarter in, a third down).
"""
import io
import random

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, INFO_FILE
from cn_clip_pokemon.errors import UserError

WHITE, GREY, BLACK = (255, 255, 255), (128, 128, 128), (0, 0, 0)


def _rgba(picture):
    """The original decoded once, the way every door opens a picture (images.read_picture), transparency kept."""
    from cn_clip_pokemon.images import read_picture

    return read_picture(picture).convert("RGBA")


def _on(image, colour_or_background):
    from cn_clip_pokemon.images import composite_on_white

    return composite_on_white(image, background=colour_or_background)


def _jpeg(image, index):
    buffer = io.BytesIO()
    _on(image, WHITE).save(buffer, format="JPEG", quality=30)
    buffer.seek(0)
    from PIL import Image

    return Image.open(buffer).convert("RGB")


def _rescaled(factor):
    def change(image, index):
        from PIL import Image

        white = _on(image, WHITE)
        small = white.resize((max(1, round(white.width * factor)), max(1, round(white.height * factor))), Image.BICUBIC)
        return small.resize(white.size, Image.BICUBIC)

    return change


def _blur(image, index):
    from PIL import ImageFilter

    return _on(image, WHITE).filter(ImageFilter.GaussianBlur(radius=min(image.size) / 64))


def _background(colour):
    def change(image, index):
        return _on(image, colour)

    return change


def photo_background(size, index):
    """A photo-like background: a smooth field of random colours (4 x 4 upscaled) with pixel noise."""
    import numpy as np
    from PIL import Image

    generator = random.Random(index)
    field = Image.new("RGB", (4, 4))
    field.putdata([tuple(generator.randrange(256) for _ in range(3)) for _ in range(16)])
    smooth = np.asarray(field.resize(size, Image.BICUBIC), dtype=np.float32)
    noise = np.random.default_rng(index).normal(0, 12, smooth.shape)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def _photo(image, index):
    return _on(image, photo_background(image.size, index))


def _crop80(image, index):
    box = image.getchannel("A").getbbox() or (0, 0, image.width, image.height)
    left, top, right, bottom = box
    cut_w, cut_h = (right - left) * 0.1, (bottom - top) * 0.1
    return image.crop((round(left + cut_w), round(top + cut_h), round(right - cut_w), round(bottom - cut_h)))


def _rotate15(image, index):
    from PIL import Image

    return image.rotate(15 if index % 2 == 0 else -15, resample=Image.BICUBIC, expand=True)


def _canvas(image, index):
    from PIL import Image

    canvas = Image.new("RGBA", (image.width * 2, image.height * 2), WHITE + (255,))
    canvas.alpha_composite(image, (image.width // 4, image.height // 3))
    return canvas.convert("RGB")


PERTURBATIONS = {
    "jpeg30": _jpeg,
    "half": _rescaled(1 / 2),
    "quarter": _rescaled(1 / 4),
    "blur": _blur,
    "grey-bg": _background(GREY),
    "black-bg": _background(BLACK),
    "photo-bg": _photo,
    "crop80": _crop80,
    "rotate15": _rotate15,
    "canvas": _canvas,
}


def parse_perturbations(text):
    """``jpeg30,half,...`` (or ``all``) -> the list of names; an unknown name is a ValueError naming the choices."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if names == ["all"]:
        return list(PERTURBATIONS)
    unknown = [name for name in names if name not in PERTURBATIONS]
    if unknown or not names:
        raise ValueError(f"unknown change {', '.join(unknown) or repr(text)}: choose from {','.join(PERTURBATIONS)} (or all)")
    return list(dict.fromkeys(names))


def perturbed(picture, name, index=0):
    """The original ``picture`` (a path or a PIL image) changed by ``name``: a PIL image (RGBA where
    transparency is kept, for the picture path to put on white; else RGB)."""
    return _changed(_rgba(picture), name, index)


def _changed(original, name, index):
    """``original`` (decoded RGBA, left as it is) changed by ``name``."""
    return PERTURBATIONS[name](original, index) if name != "clean" else original


def sampled_positions(count, sample=None):
    """Positions of ``sample`` pictures out of ``count``, evenly spaced (the first included), the same
    every run; all of them when ``sample`` is None or not smaller than ``count``."""
    if sample is None or sample >= count:
        return list(range(count))
    return [position * count // sample for position in range(sample)]


def evaluate_perturbed(checkpoint, dataset_dir, images_dir, names, split=EVAL_SPLIT, device=None, batch_size=32,
                       progress=True, loaded=None, cache=True, sample=None, **load_options):
    """Zero-shot top-1/top-5 of ``split`` (the names and hits of ``evaluate``), clean and under each
    change of ``names``, the changes applied to the original pictures in ``images_dir`` (the folder
    the dataset was built from). Returns ``{"pictures", "names", "rows": {"clean": {"top1", "top5"},
    name: {"top1", "top5", "top1_drop", "top5_drop"}}}`` (drops in points against clean). ``sample``: only
    that many pictures of the split, evenly spaced (:func:`sampled_positions`); each keeps the change it
    gets in a run over the whole split (a change's side and background follow the picture's position)."""
    from pathlib import Path

    from cn_clip_pokemon.checkpoint import load_checkpoint
    from cn_clip_pokemon.dataset_split import SplitPictures
    from cn_clip_pokemon.zero_shot import top_k_accuracy, zero_shot_labels
    import torch

    from cn_clip_pokemon.encoding import encode_pictures, name_embeddings, zero_shot_probabilities
    from cn_clip_pokemon.progress import progress_bar

    images_dir = Path(images_dir)
    loaded = loaded or load_checkpoint(checkpoint, device=device, **load_options)
    pictures = SplitPictures(dataset_dir, split)
    try:
        if not pictures.image_ids:
            raise UserError(f"the {split} split of {dataset_dir} has no pictures")
        sources = [pictures.source(image_id) for image_id in pictures.image_ids]
        if None in sources:
            raise UserError(f"{dataset_dir} has no {INFO_FILE} naming the original pictures: --perturb needs a dataset made by build-dataset")
        files = [images_dir / source for source in sources]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: no such picture ({len(missing)} of {len(files)} missing): give --images, the folder {dataset_dir} was built from")
        names_list, templates, labels = zero_shot_labels(pictures, dataset_dir, loaded.captions)
        texts = name_embeddings(loaded, names_list, templates, cache=cache, progress=progress)
    finally:
        pictures.close()
    in_split = len(files)
    positions = sampled_positions(in_split, sample)
    files, labels = [files[p] for p in positions], [labels[p] for p in positions]
    changes = ["clean", *names]
    embedded = {name: [] for name in changes}
    bar = progress_bar(total=len(files), description=f"encoding {split} pictures: {', '.join(changes)}",
                       unit="picture", enabled=progress)
    for start in range(0, len(files), batch_size):
        # each original decoded once, every change built from it; one batch per change, as before
        originals = [_rgba(f) for f in files[start:start + batch_size]]
        for name in changes:
            changed = [_changed(original, name, positions[start + i]) for i, original in enumerate(originals)]
            embedded[name].append(encode_pictures(loaded, changed, batch_size=batch_size, progress=False))
        bar.update(len(originals))
    bar.close()
    rows = {}
    for name in changes:
        rows[name] = top_k_accuracy(zero_shot_probabilities(loaded, torch.cat(embedded[name]), texts), labels)
        if name != "clean":
            for key in ("top1", "top5"):
                rows[name][f"{key}_drop"] = round(rows["clean"][key] - rows[name][key], 2)
    return {"checkpoint": str(loaded.path), "dataset": str(dataset_dir), "split": split, "pictures": len(files), "pictures_in_split": in_split,
            "names": len(names_list), "rows": rows}


def print_table(result):
    sampled = result.get("pictures_in_split", result["pictures"])
    pictures = f"{result['pictures']} of {sampled} pictures" if sampled != result["pictures"] else f"{result['pictures']} pictures"
    print(f"{result['checkpoint']} on {result['dataset']} ({result['split']}: {pictures}, {result['names']} names)")
    print(f"  {'change':10s} {'top-1':>7s} {'top-5':>7s} {'top-1 vs clean':>15s} {'top-5 vs clean':>15s}")
    for name, row in result["rows"].items():
        # 0.0 - drop, not -drop: no drop prints +0.00, not -0.00
        drops = ("", "") if name == "clean" else (f"{0.0 - row['top1_drop']:+.2f}", f"{0.0 - row['top5_drop']:+.2f}")
        print(f"  {name:10s} {row['top1']:7.2f} {row['top5']:7.2f} {drops[0]:>15s} {drops[1]:>15s}")
