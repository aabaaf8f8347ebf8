"""PhotoAugment: training pictures made to look like users' pictures (background, crop, turn, canvas, quality)."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cn_clip_pokemon.photo_augment import Chain, PhotoAugment


def ring_sprite(side=64):
    """A stored training picture: a red ring on white, with white inside the ring (white of the Pokemon)."""
    image = Image.new("RGB", (side, side), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), outline=(200, 30, 30), width=5)
    return image


def test_the_background_replaces_only_the_white_around_the_sprite():
    sprite = ring_sprite()
    before = np.asarray(sprite)
    changed = 0
    for seed in range(8):
        after = np.asarray(PhotoAugment(background=1.0, generator=torch.Generator().manual_seed(seed))(sprite))
        assert after.shape == before.shape and after.dtype == np.uint8
        assert (after[32, 32] == 255).all(), "white inside the ring is the Pokemon's and stays"
        assert (after[30:35, 18] == before[30:35, 18]).all(), "the ring itself stays"
        changed += int((after[:4, :4] != 255).any())  # the corner is background: changed (unless drawn white)
    assert changed >= 7


def test_a_seed_gives_the_same_picture_and_geometry_keeps_the_size():
    sprite = ring_sprite()
    every = dict(background=0.5, crop=0.5, rotate=0.5, canvas=0.5, jpeg=0.5, low_resolution=0.5, blur=0.5)
    first = [np.asarray(PhotoAugment(**every, generator=torch.Generator().manual_seed(seed))(sprite)) for seed in range(6)]
    again = [np.asarray(PhotoAugment(**every, generator=torch.Generator().manual_seed(seed))(sprite)) for seed in range(6)]
    assert all((a == b).all() for a, b in zip(first, again))
    assert all(a.shape == (64, 64, 3) for a in first)
    assert len({a.tobytes() for a in first}) > 1


@pytest.mark.parametrize("change", ["crop", "rotate", "canvas", "jpeg", "low_resolution", "blur"])
def test_each_change_changes_the_picture_and_nothing_is_changed_at_probability_zero(change):
    sprite = ring_sprite()
    generator = torch.Generator().manual_seed(0)
    assert (np.asarray(PhotoAugment(generator=generator)(sprite)) == np.asarray(sprite)).all()
    changed = np.asarray(PhotoAugment(**{change: 1.0}, generator=generator)(sprite))
    assert changed.shape == (64, 64, 3) and (changed != np.asarray(sprite)).any()


def test_chain_applies_each_in_turn():
    sprite = ring_sprite()
    grey = Chain(lambda image: image.convert("L"), lambda image: image.convert("RGB"))
    assert grey(sprite).mode == "RGB" and np.ptp(np.asarray(grey(sprite)), axis=-1).max() == 0


def test_framed_pictures_are_framed_again_as_every_door_would():
    """framed=True (a dataset built with --framing subject): after a crop or a turn, and on one colour,
    the picture is what the door gives for it: its subject framed on white, filling the square."""
    from cn_clip_pokemon.images import fit_square, frame_subject

    stored = fit_square(frame_subject(ring_sprite()), 64)  # as the builder stores it
    for change in ("crop", "rotate"):
        for seed in range(4):
            changed = PhotoAugment(**{change: 1.0}, max_degrees=15, framed=True,
                                   generator=torch.Generator().manual_seed(seed))(stored)
            box = np.nonzero((np.asarray(changed) < 200).any(axis=-1))
            spans = (box[0].max() - box[0].min() + 1, box[1].max() - box[1].min() + 1)
            assert max(spans) >= 62, (change, seed, spans)  # the subject fills the square again
    coloured = busy = 0
    for seed in range(12):
        changed = np.asarray(PhotoAugment(background=1.0, framed=True, generator=torch.Generator().manual_seed(seed))(stored))
        if (changed[:2, :2] == 255).all():  # one colour, framed away: white around the ring, as the door shows it
            coloured += 1
            assert (changed[32, 32] == 255).all()
        else:  # a busy field: the picture keeps its frame
            busy += 1
    assert coloured and busy


def test_a_crop_into_the_subject_keeps_its_frame_in_training(monkeypatch):
    """A door cuts a picture with no one-colour border out with GrabCut (0.1 s); training's crops leave such
    borders, and there the frame is kept instead (0.4 ms), so the loader never runs GrabCut."""
    import cn_clip_pokemon.images as images

    def no_grabcut(rgb):
        raise AssertionError("the training loader ran GrabCut")

    monkeypatch.setattr(images, "cut_out_subject", no_grabcut)
    stored = images.fit_square(images.frame_subject(ring_sprite()), 64)
    for seed in range(8):
        changed = PhotoAugment(crop=1.0, framed=True, generator=torch.Generator().manual_seed(seed))(stored)
        assert changed.size == (64, 64)


def test_the_dataset_plugin_frames_again_where_its_dataset_is_framed():
    from cn_clip_pokemon.default_plugins.pokemon_dataset import SpriteAugment
    from cn_clip_pokemon.photo_augment import for_framing

    chain = Chain(SpriteAugment(), PhotoAugment(crop=0.2))
    framed, plain = for_framing(chain, "subject"), for_framing(chain, "as-is")
    assert framed.transforms[1].framed is True and plain.transforms[1].framed is False
    assert chain.transforms[1].framed is None  # the registered dataset's own object is left as it is
    assert for_framing(PhotoAugment(framed=False), "subject").framed is False  # given explicitly: kept
    sprite = SpriteAugment()
    moved = for_framing(sprite, "subject")  # a framed dataset: moved and scaled slightly
    assert (moved.scale, moved.shift) == ((0.9, 1.05), 0.03) and (sprite.scale, sprite.shift) == (None, None)
    still = for_framing(sprite, "as-is")
    assert (still.scale, still.shift) == ((1.0, 1.0), 0.0)
    given = SpriteAugment(scale=(1, 1), shift=0)
    assert for_framing(given, "subject") is given  # given explicitly: kept
