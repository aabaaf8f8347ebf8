"""Framing: build-dataset --framing subject crops every picture to its subject on white, checkpoints
trained on it record "framing", and every door frames a user's picture the same way."""
import json

import numpy as np
import pytest
from PIL import Image

from cn_clip_pokemon.images import (
    PicturePreprocess,
    composite_on_white,
    fit_square,
    frame_subject,
    framed_picture,
    open_picture,
    read_picture,
    square_picture,
)

from conftest import random_checkpoint, run, train_command


def sprite(margin=(10, 6, 30, 20)):
    """A 64 x 64 RGBA sprite: a 24 x 30 body of distinct colours with a dark outline, transparent around
    it (left, top, right, bottom margins as given, so the subject is off centre as in real sprites)."""
    left, top, right, bottom = margin
    width, height = 24, 30
    body = np.zeros((height, width, 4), dtype=np.uint8)
    body[..., 0] = np.linspace(60, 250, width, dtype=np.uint8)[None, :]
    body[..., 1] = np.linspace(200, 90, height, dtype=np.uint8)[:, None]
    body[..., 2] = 170
    body[..., 3] = 255
    body[0, :, :3] = body[-1, :, :3] = body[:, 0, :3] = body[:, -1, :3] = (40, 20, 60)  # the outline
    picture = np.zeros((top + height + bottom, left + width + right, 4), dtype=np.uint8)
    picture[top:top + height, left:left + width] = body
    return Image.fromarray(picture, "RGBA")


def on(picture, colour):
    return composite_on_white(picture, background=colour)


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_sprite_is_cropped_to_its_subject_on_white():
    framed = frame_subject(sprite())
    assert framed.mode == "RGB" and framed.size == (24, 30)
    assert (pixels(framed) == pixels(on(sprite(), (255, 255, 255)).crop((10, 6, 34, 36)))).all()


@pytest.mark.parametrize("colour", [(128, 128, 128), (0, 0, 0), (30, 160, 90), (255, 255, 255)])
def test_one_colour_around_the_subject_is_framed_away(colour):
    """A sprite pasted on grey, black, green or white gives the picture the transparent sprite gives."""
    assert (pixels(frame_subject(on(sprite(), colour))) == pixels(frame_subject(sprite()))).all()


def test_a_picture_inside_a_larger_canvas_gives_the_same_picture():
    canvas = Image.new("RGB", (200, 150), (255, 255, 255))
    canvas.paste(on(sprite(), (255, 255, 255)), (37, 80))
    assert (pixels(frame_subject(canvas)) == pixels(frame_subject(sprite()))).all()


def test_a_lossy_background_still_frames_to_the_subject():
    """JPEG noise on the background is within tolerance; the box is the subject's, not its ringing."""
    import io

    buffer = io.BytesIO()
    on(sprite(margin=(40, 40, 40, 40)), (128, 128, 128)).save(buffer, format="JPEG", quality=30)
    framed = frame_subject(Image.open(buffer))
    width, height = framed.size
    assert abs(width - 24) <= 2 and abs(height - 30) <= 2, framed.size


def test_a_photo_keeps_its_frame_and_background():
    """No transparency, no one-colour border and no one subject to cut out (noise): a photo is only
    opened, as open_picture opens it."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    assert (pixels(frame_subject(photo)) == pixels(photo)).all()
    flat = Image.new("RGB", (40, 30), (10, 200, 30))  # one colour: nothing to crop to
    assert (pixels(frame_subject(flat)) == pixels(flat)).all()


def busy_field(size, seed):
    """A photo-like background: a smooth field of random colours (5 x 5 upscaled) with pixel noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    noisy = np.asarray(field, dtype=np.float32) + rng.normal(0, 10, (size[1], size[0], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_busy_background_is_cut_away(seed):
    """A sprite on a busy field (no one-colour border): GrabCut finds it, and the framed picture is the
    subject on white, as the transparent sprite gives it, give or take its edge."""
    picture = sprite(margin=(30, 26, 50, 40))
    busy = busy_field(picture.size, seed)
    busy.paste(picture, (0, 0), picture)
    framed = frame_subject(busy)
    assert abs(framed.width - 24) <= 3 and abs(framed.height - 30) <= 3, framed.size
    clean = pixels(fit_square(frame_subject(picture), 32))
    cut = pixels(fit_square(framed, 32))
    assert np.abs(clean - cut).mean() < 12, np.abs(clean - cut).mean()
    # the same picture gives the same cut (OpenCV's random numbers are seeded each time)
    assert (pixels(frame_subject(busy)) == pixels(framed)).all()
    # cut_out=False (the training loader's crops): the frame is kept, as it was before cutting out existed
    assert (pixels(frame_subject(busy, cut_out=False)) == pixels(busy)).all()


def test_white_inside_the_subject_stays():
    """Only background connected to the border is made white: a ring's grey hole is not the background."""
    ring = Image.new("RGB", (60, 60), (128, 128, 128))
    ring.paste((200, 30, 30), (15, 15, 45, 45))
    ring.paste((128, 128, 128), (25, 25, 35, 35))  # the background's colour, inside the subject
    framed = pixels(frame_subject(ring))
    assert framed.shape == (30, 30, 3)
    assert (framed[10:20, 10:20] == 128).all() and (framed[0, 0] == (200, 30, 30)).all()


def test_a_large_photo_is_framed_on_a_small_copy():
    """A product shot: the background is found on a copy at most 256 px long, the crop at full size."""
    shot = Image.new("RGB", (2000, 1500), (240, 240, 240))
    shot.paste((20, 60, 200), (500, 250, 1300, 1450))
    framed = frame_subject(shot)
    assert framed.size == (800, 1200) and framed.getpixel((400, 600)) == (20, 60, 200)


def test_a_huge_picture_is_framed_at_a_bounded_size():
    """Longer than FRAMING_LIMIT (2048): shrunk to it first, so memory does not grow with the picture."""
    from cn_clip_pokemon.images import FRAMING_LIMIT

    shot = Image.new("RGB", (8000, 4000), (240, 240, 240))
    shot.paste((20, 60, 200), (2000, 1000, 5200, 3800))
    framed = frame_subject(shot)
    scale = FRAMING_LIMIT / 8000
    assert abs(framed.width - 3200 * scale) <= 2 and abs(framed.height - 2800 * scale) <= 2, framed.size


def test_every_door_frames_as_the_checkpoint_says(tmp_path):
    """A checkpoint recording "subject": load_model's preprocess, classify and the page's path frame a
    user's picture, so the sprite on grey, on black, inside a canvas and as a transparent PNG give one
    embedding; a checkpoint without the entry takes pictures as they are, as before."""
    import torch

    from cn_clip_pokemon import load_checkpoint, load_model
    from cn_clip_pokemon.encoding import encode_pictures

    framed_path = random_checkpoint(tmp_path / "framed.pt", framing="subject")
    plain_path = random_checkpoint(tmp_path / "plain.pt")
    model, preprocess = load_model(framed_path, device="cpu")
    assert preprocess.framing == "subject" and "frame_subject" in repr(preprocess)
    assert load_checkpoint(plain_path, device="cpu").preprocess.framing == "as-is"

    png = tmp_path / "sprite.png"
    sprite().save(png)
    canvas = Image.new("RGB", (160, 160), (255, 255, 255))
    canvas.paste(on(sprite(), (255, 255, 255)), (70, 30))
    variants = [png, read_picture(png), on(sprite(), (128, 128, 128)), on(sprite(), (0, 0, 0)), canvas]
    loaded = load_checkpoint(framed_path, device="cpu")
    embeddings = encode_pictures(loaded, variants, progress=False)
    assert torch.allclose(embeddings, embeddings[:1].expand_as(embeddings), atol=1e-5)
    assert torch.equal(preprocess(png), PicturePreprocess(loaded.input_resolution, "subject")(canvas))

    plain = encode_pictures(load_checkpoint(plain_path, device="cpu"), variants, progress=False)
    assert not torch.allclose(plain[2], plain[0], atol=1e-3)  # as-is: grey is not white


def test_the_builder_stores_framed_pictures_and_records_it(sprite_pictures, tmp_path):
    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.dataset_split import SplitPictures

    out = tmp_path / "framed"
    build_dataset(sprite_pictures, out, image_size=32, framing="subject", split_by="view", seed=0, progress=False)
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["framing"] == "subject"
    pictures = SplitPictures(out, "train")
    try:
        assert pictures.framing == "subject"
        checked = 0
        for image_id in pictures.image_ids[:20]:
            source = sprite_pictures / info["images"][str(image_id)]["source"]
            expected = fit_square(frame_subject(read_picture(source)), 32)
            assert (pixels(pictures.picture(image_id)) == pixels(expected)).all(), source
            assert (pixels(expected) == pixels(square_picture(source, 32, "subject"))).all()
            checked += 1
        assert checked == 20
    finally:
        pictures.close()


def test_framing_is_checked_everywhere():
    from cn_clip_pokemon.errors import UserError

    with pytest.raises(UserError, match="unknown framing 'tight': choose from as-is, subject"):
        PicturePreprocess(32, "tight")
    with pytest.raises(UserError, match="unknown framing"):
        framed_picture(sprite(), "tight")
    assert (pixels(framed_picture(sprite())) == pixels(open_picture(sprite()))).all()


def test_build_dataset_refuses_an_unknown_framing(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cn_clip_pokemon", "build-dataset", "--images", str(tmp_path),
                             "--out", str(tmp_path / "out"), "--framing", "tight"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'tight'" in result.stderr


def test_training_records_the_framing_of_its_dataset(runner, sprite_pictures, tmp_path):
    """Upstream's own main, patched (patches/0031), writes the dataset's framing into every checkpoint."""
    from cn_clip_pokemon.builder.build import build_dataset

    from conftest import load_checkpoint as read_saved

    dataset = tmp_path / "framed"
    build_dataset(sprite_pictures, dataset, image_size=32, framing="subject", split_by="view", seed=0, progress=False)
    logs = tmp_path / "logs"
    run(train_command(runner, dataset / "lmdb" / "train", logs, "--max-steps", "2"))
    saved = read_saved(logs / "run" / "checkpoints" / "epoch_latest.pt")
    assert saved["framing"] == "subject"
    from cn_clip_pokemon import load_checkpoint

    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt", device="cpu").framing == "subject"
