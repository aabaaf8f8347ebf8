"""evaluate --perturb: the changes of a user's picture, applied to the original sprite before the picture path."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from PIL import Image  # noqa: E402

from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.evaluation import evaluate  # noqa: E402
from cn_clip_pokemon.images import square_picture  # noqa: E402
from cn_clip_pokemon.perturb import PERTURBATIONS, parse_perturbations, perturbed  # noqa: E402
from conftest import random_checkpoint  # noqa: E402

RED = (200, 30, 30)


def sprite():
    """40 x 40, transparent but for an opaque red 20 x 20 square in the middle."""
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 20), RED + (255,)), (10, 10))
    return image


def test_backgrounds_replace_only_the_transparent_pixels():
    for name, corner in (("grey-bg", (128, 128, 128)), ("black-bg", (0, 0, 0))):
        changed = perturbed(sprite(), name)
        assert changed.getpixel((0, 0)) == corner and changed.getpixel((20, 20)) == RED
    photo = perturbed(sprite(), "photo-bg", index=3)
    assert photo.getpixel((20, 20)) == RED
    assert len({photo.getpixel((x, 2)) for x in range(0, 40, 4)}) > 3  # not one flat colour
    assert perturbed(sprite(), "photo-bg", index=3).tobytes() == photo.tobytes()  # repeatable


def test_each_change_does_what_it_says():
    assert perturbed(sprite(), "crop80").size == (16, 16)  # 80% of the visible 20 x 20 box
    assert perturbed(sprite(), "canvas").size == (80, 80)
    turned = perturbed(sprite(), "rotate15")
    assert turned.width > 40 and turned.getpixel((0, 0))[3] == 0  # the corners stay transparent
    for name in ("jpeg30", "half", "quarter", "blur"):
        changed = perturbed(sprite(), name)
        assert changed.mode == "RGB" and changed.size == (40, 40) and changed.getpixel((0, 0)) != (0, 0, 0)
        assert changed.tobytes() != perturbed(sprite(), "grey-bg").tobytes()
    assert perturbed(sprite(), "quarter").getpixel((11, 20)) != RED  # the edge is smeared
    assert perturbed(sprite(), "jpeg30").getpixel((20, 20)) != RED or perturbed(sprite(), "jpeg30").getpixel((10, 10)) != RED


def test_unknown_changes_are_refused_naming_the_choices(capsys):
    assert parse_perturbations("all") == list(PERTURBATIONS)
    with pytest.raises(ValueError, match="unknown change sepia: choose from jpeg30"):
        parse_perturbations("jpeg30,sepia")
    assert main(["evaluate", "--checkpoint", "x.pt", "--dataset", "d", "--perturb", "sepia"]) == 2
    assert "unknown change sepia" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("perturb") / "epoch_latest.pt", seed=5)


def test_evaluate_perturb_prints_one_table_against_the_clean_split(tiny_checkpoint, sprite_dataset, sprite_pictures, capsys):
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--images", str(sprite_pictures),
            "--device", "cpu", "--perturb", "all"]
    assert main(base + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["rows"]) == ["clean", *PERTURBATIONS]
    # clean is the original through the picture path: what the builder stored and evaluate reads
    stored = evaluate(tiny_checkpoint, sprite_dataset, split="test", device="cpu", cache=False, progress=False)
    assert result["pictures"] == stored["pictures"]
    assert result["rows"]["clean"] == pytest.approx(stored["zero_shot"])
    for name in PERTURBATIONS:
        row = result["rows"][name]
        assert row["top1_drop"] == pytest.approx(result["rows"]["clean"]["top1"] - row["top1"], abs=0.01)
    assert main(base[:-1] + ["grey-bg,jpeg30"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[-3:]] == ["clean", "grey-bg", "jpeg30"]
    assert "top-1 vs clean" in table[1]


def test_a_real_sprite_on_grey_keeps_its_own_pixels(sprite_dataset, sprite_pictures):
    source = next(sprite_pictures.rglob("*.png"))
    clean, grey = square_picture(perturbed(source, "clean"), 64), square_picture(perturbed(source, "grey-bg"), 64)
    clean, grey = np.asarray(clean).reshape(-1, 3), np.asarray(grey).reshape(-1, 3)
    assert ((clean == 255).all(1) & (grey == 128).all(1)).any()  # the background, now grey
    sprite_pixels = ~(clean == 255).all(1)
    assert (clean[sprite_pixels] == grey[sprite_pixels]).all(1).mean() > 0.5  # the sprite itself unchanged


def test_missing_originals_are_one_line_naming_images(tiny_checkpoint, sprite_dataset, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--images", str(tmp_path),
                 "--device", "cpu", "--perturb", "blur"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --images" in err[0]


def test_clean_is_the_picture_every_door_opens_even_for_a_16_bit_png(tmp_path):
    from cn_clip_pokemon.images import composite_on_white, open_picture

    path = tmp_path / "deep.png"
    ramp = (np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really 16-bit on disk
    opened = open_picture(path)
    assert len(np.unique(np.asarray(opened))) > 100  # scaled, not clipped to white
    clean = perturbed(path, "clean")
    assert composite_on_white(clean).tobytes() == opened.tobytes()
    assert open_picture(clean).tobytes() == opened.tobytes()  # and the picture path leaves it so


def test_a_fifo_in_place_of_an_original_is_refused_not_waited_on(tmp_path):
    import os

    from cn_clip_pokemon.images import PictureError

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(PictureError, match="pipe.png"):
        perturbed(fifo, "blur")


@pytest.mark.parametrize("extra, named", [
    (["--out", "worst.png"], "--out"),
    (["--worst", "3"], "--worst"),
    (["--predictions", "preds"], "--predictions"),
])
def test_flags_perturb_does_not_use_are_a_usage_error(tiny_checkpoint, sprite_dataset, sprite_pictures, tmp_path, monkeypatch,
                                                       capsys, extra, named):
    monkeypatch.chdir(tmp_path)
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--images", str(sprite_pictures),
                 "--device", "cpu", "--perturb", "blur", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "--perturb" in err[0]
    assert not (tmp_path / "worst.png").exists() and not (tmp_path / "preds").exists()


def test_images_without_perturb_is_a_usage_error(tiny_checkpoint, sprite_dataset, sprite_pictures, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--images", str(sprite_pictures),
                 "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--images goes with --perturb" in err[0]


def test_sample_measures_evenly_spaced_pictures_each_with_its_own_change(tiny_checkpoint, sprite_dataset, sprite_pictures,
                                                                         capsys, monkeypatch):
    from cn_clip_pokemon import perturb

    assert perturb.sampled_positions(10, 4) == [0, 2, 5, 7]
    assert perturb.sampled_positions(3, 5) == perturb.sampled_positions(3) == [0, 1, 2]
    seen = []
    change = perturb.PERTURBATIONS["rotate15"]
    monkeypatch.setitem(perturb.PERTURBATIONS, "rotate15", lambda image, index: seen.append(index) or change(image, index))
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--images", str(sprite_pictures),
            "--device", "cpu", "--perturb", "rotate15", "--sample", "2"]
    assert main(base + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    total = result["pictures_in_split"]
    assert total > 2 and result["pictures"] == 2
    # a sampled picture is turned the way it is in a run over the whole split: by its position there
    assert seen == perturb.sampled_positions(total, 2)
    assert main(base) == 0
    assert f"2 of {total} pictures" in capsys.readouterr().out.splitlines()[0]


def test_sample_without_perturb_is_a_usage_error(tiny_checkpoint, sprite_dataset, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--device", "cpu",
                 "--sample", "5"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sample goes with --perturb" in err[0]
