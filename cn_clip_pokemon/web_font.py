"""The web page's Chinese font: which font file `serve` gives browsers, fetched when there is none,
and the CSS that uses it for the CJK characters only.

A browser on a machine without a CJK font would show boxes for the names; the page serves one as a
web font instead, while a browser that already has one of the usual faces downloads nothing.
"""
import sys
import threading
from pathlib import Path
from urllib.parse import quote

from cn_clip_pokemon.errors import UserError

# The web font: its family name, the faces a browser may already have (then nothing is
# downloaded), and the characters it is used for (Latin text keeps the theme's font).
WEB_FONT_FAMILY = "cn-clip-pokemon CJK"
LOCAL_CJK_FACES = ("Noto Sans SC", "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei")
CJK_RANGES = "U+2E80-2FDF, U+3000-33FF, U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF, U+FE30-FE4F, U+FF00-FFEF, U+20000-2FA1F"
# Browsers load single-face font files only: Chromium refuses a .ttc collection (WenQuanYi's).
WEB_FONT_SUFFIXES = (".ttf", ".otf", ".woff", ".woff2")


def web_font():
    """``(path, missing)``: the CJK font file the page serves to browsers, and whether it still has
    to be fetched.

    The machine's CJK font when it is one a browser can load (a single face: .ttf, .otf, .woff);
    else the pinned Noto Sans SC that the demo fetches for its grids (``grids.fetch_cjk_font``),
    from the cache, or ``missing`` when it is not there yet.
    """
    from cn_clip_pokemon.grids import fetched_font_path, find_cjk_font

    found = find_cjk_font()
    if found and found.lower().endswith(WEB_FONT_SUFFIXES):
        return Path(found), False
    fetched = fetched_font_path()
    return fetched, not fetched.is_file()


def fetch_web_font_in_background():
    """Fetch the pinned Noto Sans SC for the page in a background thread (the page does not wait:
    a browser that opens it before the font is there shows the names once it is reloaded)."""
    from cn_clip_pokemon.grids import FONT_PACKAGE, FONT_PIN, fetch_cjk_font

    def fetch():
        try:
            fetch_cjk_font()
        except UserError as error:
            print(f"cn-clip-pokemon: warning: {error}; a browser without a Chinese font shows boxes for the names",
                  file=sys.stderr)

    print(f"cn-clip-pokemon: fetching {FONT_PACKAGE}@{FONT_PIN[0]} (Noto Sans SC) for the page's Chinese, once",
          file=sys.stderr)
    thread = threading.Thread(target=fetch, name="cn-clip-pokemon-font", daemon=True)
    thread.start()
    return thread


def web_font_css(font_path, theme):
    """CSS that gives the page ``font_path`` for Chinese: an @font-face over the CJK ranges only
    (a face the browser already has comes first, so nothing is downloaded then), put before the
    Gradio ``theme``'s own fonts, the text font and the monospace one (the names' list uses it)."""
    formats = {".ttf": "truetype", ".otf": "opentype", ".woff": "woff", ".woff2": "woff2"}
    local = ", ".join(f'local("{face}")' for face in LOCAL_CJK_FACES)
    url = "gradio_api/file=" + quote(str(font_path))
    return (
        f'@font-face {{ font-family: "{WEB_FONT_FAMILY}"; src: {local}, url("{url}") format("{formats[Path(font_path).suffix.lower()]}"); '
        f"unicode-range: {CJK_RANGES}; font-display: swap; }}\n"
        f':root, .gradio-container {{ --font: "{WEB_FONT_FAMILY}", {theme.font}; '
        f'--font-mono: "{WEB_FONT_FAMILY}", {theme.font_mono}; }}\n'
    )
