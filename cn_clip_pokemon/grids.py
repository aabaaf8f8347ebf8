"""PNG contact sheets: pictures with caption lines under each (classify, search, evaluate, demo).

Captions are Chinese, so the font must have CJK glyphs. It is found in this order: the
``CN_CLIP_POKEMON_FONT`` environment variable (a .ttf/.otf/.ttc path), fontconfig's
``fc-list :lang=zh``, then the usual install paths of WenQuanYi, Noto CJK and Droid Sans Fallback
(Debian: ``apt-get install fonts-wqy-microhei``), then Noto Sans SC fetched once by the demo from
a pinned npm package (:func:`ensure_cjk_font`). Without any, the grid is still written, with
Pillow's default font, and a warning says the Chinese captions cannot show.
"""
import functools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write, cache_root, file_sha256

FONT_ENV = "CN_CLIP_POKEMON_FONT"
KNOWN_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
MUTED_COLOR = (110, 110, 110)
PADDING = 6


@functools.lru_cache(maxsize=1)
def find_cjk_font():
    """Path of a font with Chinese glyphs, or None."""
    configured = os.environ.get(FONT_ENV)
    if configured and Path(configured).is_file():
        return configured
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(
                ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=20, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        files = sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
        # prefer sans-serif families that render small sizes cleanly
        for preferred in ("microhei", "zenhei", "NotoSansCJK", "NotoSansSC", "Droid"):
            for file in files:
                if preferred.lower() in file.lower() and Path(file).is_file():
                    return file
        for file in files:
            if Path(file).is_file():
                return file
    for file in KNOWN_CJK_FONTS:
        if Path(file).is_file():
            return file
    fetched = fetched_font_path()
    return str(fetched) if fetched.is_file() else None


# Noto Sans SC (SIL OFL) from a pinned npm package, for machines without a CJK font: fetched like the
# sprites (npm pack, SHA-256 checked, cached); only the Regular TTF (10 MB) is kept.
FONT_PACKAGE = "@expo-google-fonts/noto-sans-sc"
FONT_PIN = ("0.4.3", "0d69d0f4971d2ff574e3d93cbc218dc950bf3f3f8f8e2c008d97687ed53aee59")
FONT_MEMBER = "package/400Regular/NotoSansSC_400Regular.ttf"


def fetched_font_path(cache=None):
    return Path(cache or cache_root()) / "fonts" / "NotoSansSC-Regular.ttf"


def fetch_cjk_font(cache=None, tarball=None):
    """A CJK font for the grids on a machine without one: the pinned Noto Sans SC, cached.

    Returns the font's path; ``tarball`` is a local copy of the npm package (checked the same way).
    Raises UserError when npm cannot get it (the grids then fall back with a warning).
    """
    import tarfile

    from cn_clip_pokemon.sprites import npm_pack

    target = fetched_font_path(cache)
    if target.is_file():
        return target
    cache_dir = Path(cache or cache_root())
    if tarball is None:
        tarball = npm_pack(FONT_PACKAGE, cache_dir, pinned=FONT_PIN)
    elif file_sha256(tarball) != FONT_PIN[1]:
        raise UserError(f"{tarball}: not the pinned {FONT_PACKAGE}@{FONT_PIN[0]} (SHA-256 differs)")
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile(FONT_MEMBER)
        if member is None:
            raise UserError(f"{tarball} has no {FONT_MEMBER}")
        with atomic_write(target) as out:
            shutil.copyfileobj(member, out)
    find_cjk_font.cache_clear()
    caption_font.cache_clear()
    return target


def ensure_cjk_font():
    """Make sure the grids can draw Chinese: a font found on the machine, else the pinned one fetched.

    Returns the font's path or None (then the grids fall back, with a warning)."""
    found = find_cjk_font()
    if found:
        return found
    print(f"cn-clip-pokemon: no font with Chinese glyphs on this machine; fetching {FONT_PACKAGE}@{FONT_PIN[0]} (Noto Sans SC)", file=sys.stderr)
    try:
        return str(fetch_cjk_font())
    except UserError as error:
        print(f"cn-clip-pokemon: warning: {error}", file=sys.stderr)
        return None


@functools.lru_cache(maxsize=8)
def caption_font(size=14):
    """``(font, has_cjk)``: a CJK font at ``size`` px, or Pillow's default font and False."""
    path = find_cjk_font()
    if path:
        try:
            return ImageFont.truetype(path, size), True
        except OSError:
            pass
    print(
        "cn-clip-pokemon: warning: no font with Chinese glyphs found, grid captions cannot show "
        f"Chinese names (install fonts-wqy-microhei, set {FONT_ENV} to a .ttf/.ttc file, or let "
        "`cn-clip-pokemon demo` fetch Noto Sans SC once)",
        file=sys.stderr,
    )
    try:
        return ImageFont.load_default(size), False
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default(), False


def _fit_text(draw, text, font, width):
    """``text`` cut with an ellipsis so it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _thumbnail(image, size):
    from cn_clip_pokemon.images import composite_on_white, fit_square

    return fit_square(composite_on_white(image), size)


def save_grid(cells, path, columns=None, cell_size=128, font_size=14, title=None):
    """Write a PNG grid of ``cells`` (each ``(PIL image, [caption lines])``) to ``path``, atomically.

    Pictures are padded to squares of ``cell_size`` px on white; each caption line is cut to the
    cell's width. ``columns`` defaults to a near-square layout of at most 8 columns. A caption line
    starting with ``"~"`` is drawn in grey (secondary information), without the ``"~"``.
    Returns the path written.
    """
    cells = list(cells)
    if not cells:
        raise ValueError("save_grid needs at least one cell")
    columns = columns or min(8, math.ceil(math.sqrt(len(cells))))
    columns = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / columns)
    font, _ = caption_font(font_size)
    line_height = font_size + 4
    caption_lines = max(len(lines) for _, lines in cells)
    cell_width = cell_size + 2 * PADDING
    cell_height = cell_size + 2 * PADDING + caption_lines * line_height
    title_height = line_height + PADDING if title else 0

    sheet = Image.new("RGB", (columns * cell_width, rows * cell_height + title_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PADDING, PADDING // 2), _fit_text(draw, title, font, sheet.width - 2 * PADDING), fill=TEXT_COLOR, font=font)
    for index, (image, lines) in enumerate(cells):
        left = (index % columns) * cell_width
        top = (index // columns) * cell_height + title_height
        sheet.paste(_thumbnail(image, cell_size), (left + PADDING, top + PADDING))
        for number, line in enumerate(lines):
            color = TEXT_COLOR
            if line.startswith("~"):
                color, line = MUTED_COLOR, line[1:]
            y = top + PADDING + cell_size + 2 + number * line_height
            draw.text((left + PADDING, y), _fit_text(draw, line, font, cell_size), fill=color, font=font)

    path = Path(path)
    with atomic_write(path) as f:
        sheet.save(f, format="PNG")
    return path
