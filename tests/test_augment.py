"""SpriteAugment, the pokemon-augmented dataset's training-time changes to a picture."""
import numpy as np
import pytest
import torch
from PIL import Image

from cn_clip_pokemon.default_plugins.pokemon_dataset import SpriteAugment, pokemon_augmented_dataset
from cn_clip_pokemon.photo_augment import Chain, PhotoAugment
from cn_clip_pokemon.plugins import get_datasets


def sprite(size=64):
    """A red disc with a black outline on white, like a composited sprite."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2, xx - size / 2)
    pixels = np.full((size, size, 3), 255, np.uint8)
    pixels[distance < size / 4 + 2] = (0, 0, 0)
    pixels[distance < size / 4] = (220, 40, 40)
    return Image.fromarray(pixels, "RGB")


def run(augment, picture, count):
    return [np.asarray(augment(picture)) for _ in range(count)]


def test_output_is_an_rgb_picture_of_the_same_size_with_a_white_background():
    augment = SpriteAugment(generator=torch.Generator().manual_seed(0))
    for picture in (sprite(64), sprite(64).convert("L"), sprite(32)):
        for out in run(augment, picture, 20):
            assert out.dtype == np.uint8 and out.shape == (picture.height, picture.width, 3)
            # corners are background: moved, scaled, recoloured or greyed, it stays white
            assert (out[0, 0] == 255).all() and (out[-1, -1] == 255).all()


def test_a_seed_gives_the_same_pictures_and_another_seed_others():
    picture = sprite()
    first = run(SpriteAugment(generator=torch.Generator().manual_seed(7)), picture, 8)
    again = run(SpriteAugment(generator=torch.Generator().manual_seed(7)), picture, 8)
    other = run(SpriteAugment(generator=torch.Generator().manual_seed(8)), picture, 8)
    assert all((a == b).all() for a, b in zip(first, again))
    assert any((a != b).any() for a, b in zip(first, other))


def test_each_change_happens_and_can_be_turned_off():
    picture = sprite()
    red = np.asarray(picture)[32, 32]
    # recolour only: the drawing keeps its place, its colour moves (a shiny variant)
    recoloured = run(SpriteAugment(flip=0, recolour=1, grey=0, scale=(1, 1), shift=0,
                                   generator=torch.Generator().manual_seed(1)), picture, 10)
    assert any((out[32, 32] != red).any() for out in recoloured)
    assert all((out[0, 0] == 255).all() and (out[32, 15] == 0).all() for out in recoloured)  # outline stays black
    # grey only: the three channels are equal
    grey = run(SpriteAugment(flip=0, recolour=0, grey=1, scale=(1, 1), shift=0), picture, 3)
    assert all((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all() for out in grey)
    # nothing at all: the picture itself
    unchanged = run(SpriteAugment(flip=0, recolour=0, grey=0, scale=(1, 1), shift=0), picture, 3)
    assert all((out == np.asarray(picture)).all() for out in unchanged)
    # scale and shift: the disc moves or changes size
    moved = run(SpriteAugment(flip=0, recolour=0, grey=0, scale=(0.7, 0.8), shift=0.1,
                              generator=torch.Generator().manual_seed(2)), picture, 5)
    assert all((out != np.asarray(picture)).any() for out in moved)


def test_the_augmented_dataset_is_registered_and_transforms_only_training_pictures():
    assert get_datasets()["pokemon-augmented"] is pokemon_augmented_dataset
    assert isinstance(pokemon_augmented_dataset.augment, SpriteAugment)
    assert get_datasets()["pokemon"].augment is None
    # pokemon-photo: the same sprite changes, then the user-picture changes
    photo = get_datasets()["pokemon-photo"].augment
    assert isinstance(photo, Chain) and isinstance(photo.transforms[0], SpriteAugment) and isinstance(photo.transforms[1], PhotoAugment)
    assert photo.transforms[1].background > 0


@pytest.fixture(scope="module")
def augmented_loader(sprite_dataset):
    import argparse

    args = argparse.Namespace(
        train_data=str(sprite_dataset / "lmdb" / "train"), val_data=str(sprite_dataset / "lmdb" / "valid"),
        use_augment=False, vision_model="ViT-T-8-64", batch_size=4, valid_batch_size=4, seed=0,
        num_workers=0, valid_num_workers=0,
    )
    return args


def test_training_batches_are_augmented_and_validation_batches_are_not(augmented_loader):
    args = augmented_loader
    train = pokemon_augmented_dataset.get_dataset(args, is_train=True, max_txt_length=12)
    valid = pokemon_augmented_dataset.get_dataset(args, is_train=False, max_txt_length=12)
    assert isinstance(train.dataset.transform.transforms[0], SpriteAugment)
    assert not isinstance(valid.dataset.transform, type(train.dataset.transform))  # no Compose with an augmentation
    assert not any(isinstance(t, SpriteAugment) for t in valid.dataset.transform.upstream.transforms)
    images, texts, _ = next(iter(train.dataloader))
    assert images.shape[1:] == (3, 64, 64) and images.dtype == torch.float32
    assert torch.isfinite(images).all()


def test_the_photo_dataset_changes_training_pictures_through_upstreams_loader(augmented_loader):
    from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_dataset, pokemon_photo_dataset

    args = augmented_loader
    plain = pokemon_dataset.get_dataset(args, is_train=True, max_txt_length=12)
    photo = pokemon_photo_dataset.get_dataset(args, is_train=True, max_txt_length=12)
    # the registered chain, set for the dataset's framing (as-is here: no move, no second framing)
    chain = photo.dataset.transform.transforms[0]
    assert repr(chain).startswith("SpriteAugment(") and "framed=False" in repr(chain) and "shift=0.0" in repr(chain)
    torch.manual_seed(0)
    plain_images = torch.stack([plain.dataset[index][0] for index in range(16)])
    photo_images = torch.stack([photo.dataset[index][0] for index in range(16)])
    assert photo_images.shape == plain_images.shape == (16, 3, 64, 64)
    changed = [(p != q).any().item() for p, q in zip(plain_images, photo_images)]
    assert any(changed) and torch.isfinite(photo_images).all()


def test_hue_limits_how_far_colours_turn():
    picture = sprite()
    kept = run(SpriteAugment(flip=0, recolour=1, grey=0, hue=0.0, generator=torch.Generator().manual_seed(3)), picture, 10)
    # no turn of the wheel: red stays red whatever the saturation and brightness
    assert all(out[32, 32, 0] > out[32, 32, 1] and out[32, 32, 0] > out[32, 32, 2] for out in kept)
    turned = run(SpriteAugment(flip=0, recolour=1, grey=0, hue=1.0, generator=torch.Generator().manual_seed(3)), picture, 10)
    assert any(not (out[32, 32, 0] > out[32, 32, 1] and out[32, 32, 0] > out[32, 32, 2]) for out in turned)
