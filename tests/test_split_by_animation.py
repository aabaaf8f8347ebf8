"""build-dataset --split-by animation: whole animations held out, every Pokemon still trained on."""
import json
from pathlib import Path

from cn_clip_pokemon.builder.build import build_dataset
from cn_clip_pokemon.builder.scan import Picture
from cn_clip_pokemon.builder.splits import animation_of, animation_splits
from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.dataset_format import SPLITS


def test_an_animation_is_a_view_less_its_frame_number():
    assert animation_of("back-shiny_03") == "back-shiny"
    assert animation_of("front_00") == "front"
    assert animation_of("sub/form-x-front_12") == "sub/form-x-front"
    assert animation_of("dream-world") == "dream-world"
    assert animation_of("2") == "2" and animation_of("") == ""


def images_by_split(dataset):
    info = json.loads((dataset / "dataset_info.json").read_text(encoding="utf-8"))
    return info, list(info["images"].values())


def test_no_view_of_the_test_split_is_trained_on_and_every_pokemon_is(sprite_pictures, tmp_path):
    out = tmp_path / "out"
    summary = build_dataset(sprite_pictures, out, image_size=16, split_by="animation",
                            valid_fraction=0.2, test_fraction=0.25, seed=5, progress=False)
    assert summary["split_by"] == "animation"
    info, images = images_by_split(out)
    animations = {}  # (number, animation) -> splits its frames went to
    for image in images:
        animations.setdefault((image["number"], animation_of(image["view"])), set()).add(image["split"])
    # every animation lies whole in one split: no frame of a held-out view is in train
    assert all(len(splits) == 1 for splits in animations.values()), animations
    numbers = {image["number"] for image in images}
    trained = {image["number"] for image in images if image["split"] == "train"}
    assert trained == numbers  # every Pokemon keeps training pictures
    tested = {number for (number, _), splits in animations.items() if "test" in splits}
    assert len(tested) >= len(numbers) // 2 and summary["splits"]["valid"]["images"] > 0
    for number in tested:
        seen = {animation for (n, animation), splits in animations.items() if n == number and "train" in splits}
        unseen = {animation for (n, animation), splits in animations.items() if n == number and "test" in splits}
        assert seen and unseen and not seen & unseen
    # the four sprite animations of each Pokemon, 2 frames each (fetched with --frames 2)
    assert {animation for _, animation in animations} == {"front", "back", "shiny", "back-shiny"}
    assert sum(summary["splits"][split]["images"] for split in SPLITS) == len(images)


def test_animation_splits_are_seeded_stable_and_keep_one_for_training():
    views = [f"{animation}_{frame:02d}" for animation in ("front", "back", "shiny", "back-shiny") for frame in range(3)]
    pokemon = [[Picture(f"{n}/{v}.png", f"{n}/{v}.png", n, str(n), v) for v in views] for n in range(1, 61)]
    first = [animation_splits(pictures, 0.25, 0.25, seed=1) for pictures in pokemon]
    assert first == [animation_splits(pictures, 0.25, 0.25, seed=1) for pictures in pokemon]
    assert first != [animation_splits(pictures, 0.25, 0.25, seed=2) for pictures in pokemon]
    for pictures, splits in zip(pokemon, first):
        # a quarter of 4 animations is exactly one each for valid and test; frames follow their animation
        assert splits.count("test") == splits.count("valid") == 3 and splits.count("train") == 6
        by_animation = {}
        for picture, split in zip(pictures, splits):
            by_animation.setdefault(animation_of(picture.view), set()).add(split)
        assert all(len(s) == 1 for s in by_animation.values())
    # the order the pictures come in does not change where they go
    reversed_splits = animation_splits(pokemon[0][::-1], 0.25, 0.25, seed=1)
    assert reversed_splits[::-1] == first[0]
    # a Pokemon with one animation keeps it for training, whatever the fractions
    single = [Picture("9/front_00.png", "9/front_00.png", 9, "9", "front_00"),
              Picture("9/front_01.png", "9/front_01.png", 9, "9", "front_01")]
    assert animation_splits(single, 0.45, 0.45, seed=0) == ["train", "train"]


def test_the_command_takes_split_by_animation(sprite_pictures, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["build-dataset", "--images", str(sprite_pictures), "--out", str(out), "--image-size", "16",
                     "--split-by", "animation", "--no-progress"]) == 0
    assert "split by animation" in capsys.readouterr().out
    info, _ = images_by_split(Path(out))
    assert info["split_by"] == "animation"
