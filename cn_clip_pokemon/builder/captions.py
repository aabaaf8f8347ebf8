"""Any captions, not only Pokemon: picture-caption pairs for `build-dataset --any-names` or `--manifest`.

Both feed the same builder (same splits, atomic swap, skipped entries and upstream format) as the
Pokedex naming; only where the texts come from differs:

- ``--any-names``: a file's or folder's name *is* the caption, taken as it is: no Pokedex, no number
  needed. Only a file's extension is removed (``红色圆形.png`` and ``红色圆形/1.png`` are both
  "红色圆形"; ``0001红色圆形.png`` is "0001红色圆形"). Several pictures of one caption: a folder.
- ``--manifest FILE``: a CSV (``,``), TSV (tab, no quoting) or JSONL file with a ``path`` and a
  ``caption`` column (open_clip's ``filepath`` and ``title`` also accepted; other columns ignored). A
  CSV/TSV's first line names the columns; paths are relative to the manifest's folder (or absolute).
  A picture has several captions through several rows with the same path, or a JSONL ``caption`` list.

Every caption is cleaned the same way: Unicode NFC, runs of white space (tabs, newlines) become one
space, and it is converted traditional -> simplified with OpenCC unless ``--no-t2s``. A caption that
is then empty, or holds control characters, is skipped with its reason; so is every bad manifest row
(not UTF-8, not JSON, no path, a missing or unreadable file), named ``MANIFEST:LINE``.

Groups: what must never meet in one training batch (a picture twice, or a text twice, would be a
false negative for the contrastive loss). Pictures and captions are joined when a picture carries a
caption, and when two captions tokenize identically (the model sees one text); each connected group
gets a number 1..N (in the order of its first caption), stored as the picture's ``number`` in
``dataset_info.json``. Splits deal these groups as the Pokedex path deals Pokemon, and the pokemon
dataset plugin's batches never hold two pairs of one group. With ``--any-names`` a group is exactly
one caption.
"""
import csv
import errno
import os
import stat
import unicodedata
from pathlib import Path

from cn_clip_pokemon.builder.scan import (
    SKIP_NOT_A_FILE,
    SKIP_SYMLINK_LOOP,
    SKIP_UNREADABLE,
    Picture,
    skipped_entry,
)
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.safe_reading import mode_name, parse_json, printable, read_limited

CAPTION_EXAMPLE = "红色圆形"
MANIFEST_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
PATH_COLUMNS = ("path", "filepath")
CAPTION_COLUMNS = ("caption", "title")

# Kinds of skipped entries of this module (scan.py's kinds cover the rest).
SKIP_CAPTION = "no caption"
SKIP_BAD_ROW = "bad manifest row"
SKIP_MISSING = "missing file"
SKIP_REPEATED_ROW = "repeated row"
SKIP_INSIDE_OUT = "inside --out"

MANIFEST_LIMIT = 2 << 30  # bytes; ten million rows of a path and a caption are about 1 GiB


def clean_caption(text, t2s=True):
    """``text`` as a caption: NFC, white space collapsed, simplified (``t2s``); ValueError if unusable."""
    from cn_clip_pokemon.pokedex import to_simplified

    text = " ".join(unicodedata.normalize("NFC", text).split())
    if not text:
        raise ValueError("the caption is empty")
    bad = [char for char in text if unicodedata.category(char) in ("Cc", "Cs")]
    if bad:
        shown = bad[0].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
            if unicodedata.category(bad[0]) == "Cs" else bad[0].encode("unicode_escape").decode("ascii")
        raise ValueError(f"the caption holds a control character or an undecodable byte ({shown})")
    return to_simplified(text) if t2s else text


class AnyNames:
    """A namer for ``scan_pictures``: the file's name without its extension, or the folder's name."""

    what = "caption"
    example = CAPTION_EXAMPLE
    skip_kind = SKIP_CAPTION

    def __init__(self, t2s=True):
        self.t2s = t2s

    def parse_picture_name(self, file_name, is_folder=False):
        """``(0, caption, "")``; the number is given later by :func:`number_groups`."""
        stem = file_name if is_folder else os.path.splitext(file_name)[0]
        return 0, clean_caption(stem, self.t2s), ""


def number_groups(pictures, identical=()):
    """The pictures (scan ``Picture``) with ``captions`` set and ``number`` = their group, 1..N.

    ``identical`` holds lists of captions that tokenize the same: each list becomes one group.
    """
    parent = {}

    def find(caption):
        parent.setdefault(caption, caption)
        while parent[caption] != caption:
            parent[caption] = parent[parent[caption]]
            caption = parent[caption]
        return caption

    def union(first, second):
        first, second = find(first), find(second)
        if first != second:
            parent[max(first, second)] = min(first, second)

    pictures = [picture._replace(captions=tuple(picture.captions or (picture.name,))) for picture in pictures]
    for picture in pictures:
        for caption in picture.captions:
            union(picture.captions[0], caption)
    for captions in identical:
        for caption in captions[1:]:
            union(captions[0], caption)
    # find() with union-by-minimum keeps each root the smallest caption of its group
    roots = sorted({find(caption) for caption in parent})
    number_of = {root: number for number, root in enumerate(roots, 1)}
    return [picture._replace(number=number_of[find(picture.captions[0])], name=picture.captions[0])
            for picture in pictures]


def all_captions(pictures):
    """Every distinct caption, in first-seen order."""
    return list(dict.fromkeys(caption for picture in pictures for caption in (picture.captions or (picture.name,))))


# ---------------------------------------------------------------- manifests


def _decoded_lines(data):
    """``(line, ok)`` for each line of ``data``: text (bad bytes kept as surrogates) and whether it was UTF-8."""
    for number, raw in enumerate(data.splitlines(keepends=True)):
        if number == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8"), True
        except UnicodeDecodeError:
            yield raw.decode("utf-8", "surrogateescape"), False


def _column(names, wanted, manifest):
    for name in wanted:
        if name in names:
            return names.index(name)
    return None


def _rows_of_table(data, kind, manifest):
    """``(line, path, [captions], error)`` for each row of a CSV/TSV manifest; the first line names the columns."""
    lines = list(_decoded_lines(data))
    good = [ok for _, ok in lines]
    # strict: a quote left open is an error at the end of the file, not every later row read as one caption
    options = {"delimiter": ",", "strict": True} if kind == "csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    reader = csv.reader((text for text, _ in lines), **options)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{manifest}: the manifest is empty; its first line names the columns: path,caption") from None
    except csv.Error as error:
        raise UserError(f"{manifest}:1: cannot read the header ({error})") from None
    names = [name.strip().lower() for name in header]
    path_column, caption_column = _column(names, PATH_COLUMNS, manifest), _column(names, CAPTION_COLUMNS, manifest)
    if path_column is None or caption_column is None or not all(good[:reader.line_num]):
        separator = "," if kind == "csv" else "<TAB>"
        found = separator.join(names)
        raise UserError(
            f"{manifest}:1: the first line must name the columns path{separator}caption (or open_clip's "
            f"filepath{separator}title), found {found[:120]!r}"
        )
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # The reader goes on at the next line: a field over csv's limit (131,072 characters) costs
            # its row only; a quote left open runs to the end of the file, and that is said.
            line = max(reader.line_num, start)
            lines = f" (lines {start}-{line})" if line > start else ""
            yield start, None, [], f"cannot parse the row{lines} ({error})"
            continue
        line = reader.line_num
        if not row or all(not field.strip() for field in row):
            continue  # a blank line is no row
        if not all(good[start - 1:line]):
            yield start, None, [], "the line is not valid UTF-8 (save the manifest as UTF-8)"
            continue
        path = row[path_column] if path_column < len(row) else ""
        caption = row[caption_column] if caption_column < len(row) else ""
        yield start, path, [caption], None


def _rows_of_jsonl(data, manifest):
    for line, (text, ok) in enumerate(_decoded_lines(data), 1):
        if not text.strip():
            continue
        if not ok:
            yield line, None, [], "the line is not valid UTF-8 (save the manifest as UTF-8)"
            continue
        try:
            record = parse_json(text)  # nesting is bounded, never a RecursionError
        except ValueError as error:
            yield line, None, [], f"not a JSON line ({getattr(error, 'msg', error)})"
            continue
        if not isinstance(record, dict):
            yield line, None, [], "not a JSON object with path and caption"
            continue
        path = next((record[key] for key in PATH_COLUMNS if key in record), None)
        caption = next((record[key] for key in CAPTION_COLUMNS if key in record), None)
        if not isinstance(path, str):
            yield line, None, [], "no \"path\" text (or open_clip's \"filepath\")"
            continue
        captions = caption if isinstance(caption, list) else [caption]
        if not captions or not all(isinstance(item, str) for item in captions):
            yield line, None, [], "\"caption\" must be a text or a list of texts (or open_clip's \"title\")"
            continue
        yield line, path, captions, None


def _file_problem(path):
    """``None`` for a regular file (a symlink to one too), else ``(kind, reason)``."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:
        return SKIP_BAD_ROW, "the path holds a NUL character"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return SKIP_SYMLINK_LOOP, "symlink loop (it leads back to itself), not followed"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return SKIP_MISSING, "no such file"
        return SKIP_UNREADABLE, f"cannot read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    return SKIP_NOT_A_FILE, f"a {mode_name(mode)}, not a picture file; not opened"


def read_manifest(manifest, t2s=True, out_dir=None):
    """``(pictures, skipped)`` from a manifest; ``pictures`` are ``Picture`` (scan.py) with ``captions``.

    Every row ends up as (part of) a picture or as a skipped entry named ``MANIFEST:LINE``. A
    manifest that cannot be read at all, or whose columns are not there, is a one-line UserError.
    ``out_dir`` (a real path): rows pointing inside it are skipped (a build replaces that folder).
    """
    manifest = Path(manifest)
    shown = printable(str(manifest))
    kind = MANIFEST_SUFFIXES.get(manifest.suffix.lower())
    if kind is None:
        raise UserError(f"--manifest {shown}: name it .csv, .tsv or .jsonl (the suffix says how it is read)")
    if manifest.is_dir():
        raise UserError(f"--manifest {shown} is a folder; give the .csv, .tsv or .jsonl file (or use --images)")
    data = read_limited(manifest, MANIFEST_LIMIT, "a manifest")  # a FIFO or a device is refused, never waited on
    base = manifest.parent
    name = printable(manifest.name)
    rows = _rows_of_jsonl(data, shown) if kind == "jsonl" else _rows_of_table(data, kind, shown)
    found = {}  # normalised path -> [Picture fields, captions, first line]
    seen_pairs = {}
    skipped = []
    for line, path, captions, error in rows:
        where = f"{name}:{line}"
        if error is not None:
            skipped.append(skipped_entry(where, SKIP_BAD_ROW, error))
            continue
        path = path.strip()
        if not path:
            skipped.append(skipped_entry(where, SKIP_BAD_ROW, "no path"))
            continue
        source = os.path.normpath(os.path.join(base, path))
        key = os.path.normcase(source)
        if key not in found:
            problem = _file_problem(source)
            if problem is None and out_dir is not None:
                real = os.path.realpath(source)
                if os.path.commonpath([real, str(out_dir)]) == str(out_dir):
                    problem = SKIP_INSIDE_OUT, "inside the --out folder, which the build replaces; not read"
            if problem is not None:
                skipped.append(skipped_entry(where, problem[0], f"{printable(path)}: {problem[1]}"))
                continue
        usable = []
        for position, caption in enumerate(captions, 1):
            label = f" (caption {position} of {len(captions)})" if len(captions) > 1 else ""
            try:
                caption = clean_caption(caption, t2s)
            except ValueError as error:
                skipped.append(skipped_entry(where, SKIP_CAPTION, f"{printable(path)}{label}: {printable(str(error))}"))
                continue
            if (key, caption) in seen_pairs:
                skipped.append(skipped_entry(where, SKIP_REPEATED_ROW, f"{printable(path)}{label}: the same picture "
                                             f"and caption as line {seen_pairs[key, caption]}"))
                continue
            seen_pairs[key, caption] = line
            usable.append(caption)
        if not usable:
            continue
        if key not in found:
            found[key] = [source, printable(path), []]
        found[key][2].extend(usable)
    pictures = [Picture(source, relative, 0, captions[0], "", tuple(captions)) for source, relative, captions in found.values()]
    return pictures, skipped
