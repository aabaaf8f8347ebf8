"""open_picture / fit_square / encode_picture on tiny pictures of every awkward kind."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from cn_clip_pokemon.images import PictureError, decode_picture, encode_picture, fit_square, open_picture
from conftest import png_header_only

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def pixel(image, xy=(0, 0)):
    return image.getpixel(xy)


def test_rgba_transparent_pixels_become_white_and_partial_alpha_blends(tmp_path):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # transparent black: upstream's convert("RGB") gives black
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    image.save(tmp_path / "a.png")
    opened = open_picture(tmp_path / "a.png")
    assert opened.mode == "RGB"
    assert pixel(opened) == WHITE
    assert pixel(opened, (1, 0)) == RED
    assert all(abs(channel - 127) <= 1 for channel in pixel(opened, (2, 0)))


def test_la_and_palette_with_transparency(tmp_path):
    Image.new("LA", (2, 2), (30, 0)).save(tmp_path / "la.png")
    assert pixel(open_picture(tmp_path / "la.png")) == WHITE

    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.gif", transparency=0)
    opened = open_picture(tmp_path / "p.gif")
    assert pixel(opened) == WHITE and pixel(opened, (1, 1)) == RED


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # pure red ink
    red, green, blue = pixel(open_picture(tmp_path / "c.jpg"), (4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    opened = open_picture(tmp_path / "g16.png")
    assert [pixel(opened, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 2), RED)
    image.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert open_picture(tmp_path / "rotated.jpg").size == (2, 6)


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animation_frames_are_chosen_explicitly(tmp_path, suffix):
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    path = tmp_path / f"anim{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    assert pixel(open_picture(path)) == RED
    assert pixel(open_picture(path, frame=1)) == (0, 0, 255)
    assert pixel(open_picture(path, frame=2)) == (0, 255, 0)
    with pytest.raises(PictureError, match="has 3 frame"):
        open_picture(path, frame=3)


def test_file_objects_work_like_paths(tmp_path):
    Image.new("RGBA", (3, 3), (255, 0, 0, 255)).save(tmp_path / "a.png")
    with open(tmp_path / "a.png", "rb") as file:
        assert pixel(open_picture(file)) == RED


def test_bad_files_raise_picture_error_naming_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buffer, "PNG", compress_level=0)
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for name, reason in [("empty.png", "empty"), ("text.png", "not a picture"), ("cut.png", "truncated")]:
        with pytest.raises(PictureError, match=reason) as caught:
            open_picture(tmp_path / name)
        assert name in str(caught.value)


@pytest.mark.parametrize("side", [12_000, 20_000])  # over Pillow's warning limit, and over twice it
def test_decompression_bombs_are_refused(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_header_only(side, side))
    with pytest.raises(PictureError, match="decompression bomb"):
        open_picture(tmp_path / "bomb.png")


def test_svg_renders_on_white(tmp_path):
    pytest.importorskip("cairosvg", reason="SVG needs the optional [svg] extra (CairoSVG)")
    (tmp_path / "art.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10">'
        '<rect x="10" y="0" width="10" height="10" fill="#ff0000"/></svg>'
    )
    opened = open_picture(tmp_path / "art.svg")
    assert opened.size == (512, 256)  # longest side SVG_SIZE, aspect kept
    assert pixel(opened, (10, 128)) == WHITE
    assert pixel(opened, (400, 128)) == RED


def test_svg_without_renderer_says_how_to_get_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cairosvg", None)  # import fails as if not installed
    (tmp_path / "art.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="2" height="2"/>')
    from cn_clip_pokemon.errors import install_hint

    with pytest.raises(PictureError) as error:
        open_picture(tmp_path / "art.svg")
    assert install_hint("svg") in str(error.value) and "[svg]" in str(error.value)


def test_fit_square_pads_on_white_keeping_aspect():
    image = Image.new("RGB", (40, 20), RED)
    fitted = fit_square(image, 64)
    assert fitted.size == (64, 64) and fitted.mode == "RGB"
    assert pixel(fitted, (32, 2)) == WHITE and pixel(fitted, (32, 61)) == WHITE  # padding above and below
    assert pixel(fitted, (2, 32)) == RED and pixel(fitted, (61, 32)) == RED
    assert fit_square(Image.new("RGB", (300, 100), RED), 64).size == (64, 64)


def test_fit_square_enlarges_pixel_art_into_sharp_blocks():
    sprite = Image.new("RGB", (2, 2), WHITE)
    sprite.putpixel((0, 0), (0, 0, 0))
    fitted = np.asarray(fit_square(sprite, 8))  # 4x: whole-number NEAREST, no blur at all
    assert set(np.unique(fitted)) == {0, 255}
    assert (fitted[:4, :4] == 0).all() and (fitted[4:, 4:] == 255).all()


def test_encode_picture_is_what_upstream_decodes():
    image = Image.new("RGB", (8, 8), RED)
    encoded = encode_picture(image)
    assert encoded.isascii() and "\n" not in encoded and "+" not in encoded and "/" not in encoded
    # cn_clip.training.data.LMDBDataset: Image.open(BytesIO(base64.urlsafe_b64decode(b64)))
    decoded = Image.open(io.BytesIO(base64.urlsafe_b64decode(encoded)))
    assert decoded.format == "PNG" and decoded.tobytes() == image.tobytes()
    assert decode_picture(encoded).tobytes() == image.tobytes()


def test_fit_square_enlarges_a_sprite_sized_picture_without_new_colours():
    rng = np.random.default_rng(0)
    colours = np.array([[255, 0, 0], [0, 0, 255], [10, 200, 30]], dtype=np.uint8)
    sprite = Image.fromarray(colours[rng.integers(0, 3, size=(46, 50))], "RGB")  # a BW sprite's size
    fitted = fit_square(sprite, 224)
    assert fitted.size == (224, 224)
    found = {tuple(colour) for colour in np.asarray(fitted).reshape(-1, 3)}
    assert found == {tuple(colour) for colour in colours} | {WHITE}  # whole 4x blocks, white margin
