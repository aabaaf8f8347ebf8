"""Grid captions on a machine without a CJK font: the fallback, and the pinned font fetched once."""
import hashlib
import io
import tarfile

import pytest
from PIL import Image

from cn_clip_pokemon import grids
from cn_clip_pokemon.errors import UserError


@pytest.fixture
def no_fonts(monkeypatch, tmp_path):
    """A machine with no CJK font anywhere (and an empty cache)."""
    monkeypatch.delenv(grids.FONT_ENV, raising=False)
    monkeypatch.setattr(grids.shutil, "which", lambda name: None)  # no fontconfig
    monkeypatch.setattr(grids, "KNOWN_CJK_FONTS", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    grids.find_cjk_font.cache_clear()
    grids.caption_font.cache_clear()
    yield tmp_path
    grids.find_cjk_font.cache_clear()
    grids.caption_font.cache_clear()


def test_without_a_cjk_font_the_grid_is_still_written_with_a_warning(no_fonts, capsys):
    assert grids.find_cjk_font() is None
    out = no_fonts / "grid.png"
    grids.save_grid([(Image.new("RGB", (32, 32), "red"), ["皮卡丘 97%"])], out)
    assert Image.open(out).size[0] > 0
    err = capsys.readouterr().err
    assert "no font with Chinese glyphs" in err and "cn-clip-pokemon demo" in err


def fake_font_package(path, font_bytes):
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(grids.FONT_MEMBER)
        info.size = len(font_bytes)
        archive.addfile(info, io.BytesIO(font_bytes))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_pinned_font_is_checked_extracted_and_then_found(no_fonts, monkeypatch):
    font_bytes = b"\x00\x01\x00\x00 a stand-in TTF"
    tarball = no_fonts / "noto-sans-sc.tgz"
    digest = fake_font_package(tarball, font_bytes)
    with pytest.raises(UserError, match="SHA-256 differs"):
        grids.fetch_cjk_font(tarball=tarball)
    assert not grids.fetched_font_path().exists()

    monkeypatch.setattr(grids, "FONT_PIN", (grids.FONT_PIN[0], digest))
    path = grids.fetch_cjk_font(tarball=tarball)
    assert path == grids.fetched_font_path() and path.read_bytes() == font_bytes
    assert grids.find_cjk_font() == str(path)  # found from then on, without npm
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_ensure_without_npm_warns_and_falls_back(no_fonts, monkeypatch, capsys):
    from cn_clip_pokemon import sprites

    monkeypatch.setattr(sprites.shutil, "which", lambda name: None)  # no npm either
    assert grids.ensure_cjk_font() is None
    err = capsys.readouterr().err
    assert "fetching @expo-google-fonts/noto-sans-sc@0.4.3" in err and "npm is not installed" in err
