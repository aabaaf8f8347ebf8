"""The training loader's cheaper paths give what upstream's gives: captions tokenized once per dataset
(patches/0033), PictureToTensor in place of upstream's transform, augmentation numbers drawn in blocks."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from cn_clip_pokemon import patching
from cn_clip_pokemon.default_plugins.pokemon_dataset import PictureToTensor, pokemon_augmented_dataset, pokemon_dataset

patching.install()


def upstream_transform(resolution, use_augment=False, split="val"):
    from cn_clip.training.data import LMDBDataset

    dataset = LMDBDataset.__new__(LMDBDataset)  # only its _build_transform: no LMDB needed
    dataset.split, dataset.use_augment = split, use_augment
    return dataset._build_transform(resolution)


def test_picture_to_tensor_gives_upstreams_numbers_for_every_picture():
    upstream = upstream_transform(32)
    fast = PictureToTensor.replacing(upstream)
    assert isinstance(fast, PictureToTensor)
    rng = np.random.default_rng(0)
    for size, mode in (((32, 32), "RGB"), ((32, 32), "RGBA"), ((32, 32), "L"), ((32, 32), "P"), ((40, 24), "RGB"), ((16, 16), "RGB")):
        channels = {"RGB": 3, "RGBA": 4}.get(mode)
        shape = (size[1], size[0], channels) if channels else (size[1], size[0])
        picture = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if mode == "P" else mode)
        picture = picture.convert("P") if mode == "P" else picture
        expected, got = upstream(picture), fast(picture)
        assert got.dtype == expected.dtype and got.shape == expected.shape == (3, 32, 32)
        assert torch.equal(got, expected), (size, mode)
        assert got.is_contiguous()


def test_picture_to_tensor_leaves_other_transforms_alone():
    augmenting = upstream_transform(32, use_augment=True, split="train")  # timm's, with --use-augment
    assert PictureToTensor.replacing(augmenting) is augmenting
    assert PictureToTensor.replacing(None) is None


@pytest.fixture()
def loader_args(sprite_dataset):
    return argparse.Namespace(
        train_data=str(sprite_dataset / "lmdb" / "train"), val_data=str(sprite_dataset / "lmdb" / "valid"),
        use_augment=False, vision_model="ViT-T-8-64", batch_size=4, valid_batch_size=4, seed=0,
        num_workers=0, valid_num_workers=0,
    )


def test_a_caption_is_tokenized_once_and_each_sample_gets_its_own_tokens(loader_args):
    from cn_clip.clip import tokenize
    from cn_clip.training.data import _preprocess_text

    from cn_clip_pokemon.dataset_format import read_pairs

    data = pokemon_dataset.get_dataset(loader_args, is_train=True, max_txt_length=12)
    dataset = data.dataset
    captions = {index: text for index, (_, text) in enumerate(read_pairs(loader_args.train_data))}
    for index in list(captions) * 2:  # every pair twice: the second read comes from the cache
        _, text, eos_index = dataset[index]
        expected = tokenize([_preprocess_text(captions[index])], context_length=12)[0]
        assert torch.equal(text, expected)
        assert int(text[eos_index]) == 102  # [SEP]
    assert set(dataset.tokenized) == set(captions.values())  # one entry per distinct caption
    _, text, _ = dataset[0]
    text.zero_()  # a sample's tokens are its own: changing them leaves the next read as it was
    assert torch.equal(dataset[0][1], tokenize([_preprocess_text(captions[0])], context_length=12)[0])


def test_the_loader_gives_upstreams_pictures_and_tokens(loader_args):
    """The validation loader (no augmentation, PictureToTensor) against upstream's LMDBDataset with its own
    transform: the same tensors, sample by sample."""
    from cn_clip.training.data import LMDBDataset

    ours = pokemon_dataset.get_dataset(loader_args, is_train=False, max_txt_length=12).dataset
    theirs = LMDBDataset(loader_args.val_data, split="val", max_txt_length=12, resolution=64)
    assert isinstance(ours.transform, PictureToTensor) and not isinstance(theirs.transform, PictureToTensor)
    for index in range(theirs.number_samples):
        image, text, eos = ours[index]
        expected_image, expected_text, expected_eos = theirs[index]
        assert torch.equal(image, expected_image) and torch.equal(text, expected_text) and eos == expected_eos


def test_augmentation_numbers_drawn_in_blocks_follow_the_seed_and_each_process():
    from cn_clip_pokemon.default_plugins.pokemon_dataset import SpriteAugment

    picture = Image.new("RGB", (32, 32), "white")
    picture.paste((200, 40, 40), (8, 8, 24, 24))

    def pictures(augment, count=12):
        return [np.asarray(augment(picture)) for _ in range(count)]

    one = SpriteAugment(recolour=1.0, scale=(0.8, 1.1), shift=0.1, generator=torch.Generator().manual_seed(5))
    same = SpriteAugment(recolour=1.0, scale=(0.8, 1.1), shift=0.1, generator=torch.Generator().manual_seed(5))
    other = SpriteAugment(recolour=1.0, scale=(0.8, 1.1), shift=0.1, generator=torch.Generator().manual_seed(6))
    first = pictures(one)  # more numbers than one block of 64: the blocks follow one another
    assert all((a == b).all() for a, b in zip(first, pictures(same)))
    assert not all((a == b).all() for a, b in zip(first, pictures(other)))
    assert len({a.tobytes() for a in first}) > 6  # each picture its own change
    copy = one.for_framing("subject")._with(recolour=1.0)  # a copy draws its own numbers, not the original's
    assert "_draws" not in copy.__dict__
    one._draws = (-1, [0.5] * 10)  # numbers drawn in another process (a fork's parent) are not reused here
    one._uniform()
    assert one._draws[0] != -1 and len(one._draws[1]) == one.DRAWS - 1


def test_augmented_training_batches_through_the_cheaper_paths(loader_args):
    data = pokemon_augmented_dataset.get_dataset(loader_args, is_train=True, max_txt_length=12)
    images, texts, eos = next(iter(data.dataloader))
    assert images.shape[1:] == (3, 64, 64) and torch.isfinite(images).all()
    assert texts.shape[1] == 12 and (texts[torch.arange(len(texts)), eos] == 102).all()
