"""Reading files we did not write (manifests, dataset_info.json, text files to convert, pictures,
markers), and printing their names.

:func:`open_regular` never blocks on a FIFO and never opens a device; :func:`read_limited` bounds the
size, :func:`parse_json` the nesting depth (never a RecursionError), and both fail with one line
naming the file. :func:`printable` makes any file name safe to print and to write as UTF-8.
"""
import errno
import json
import os
import re
import stat

from cn_clip_pokemon.errors import UserError


def is_utf8(name):
    """Whether ``name`` can be written as UTF-8 (an undecodable file-name byte cannot)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(text):
    r"""``text`` (a str, bytes or path) safe to print and to write as UTF-8: undecodable bytes and
    control characters escaped.

    File names are bytes on Linux; Python hands back the undecodable ones as lone surrogates, which
    no UTF-8 file or terminal accepts. ``0025\udcff.png`` becomes ``0025\\xff.png``, a newline ``\\n``.
    """
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    if text.isprintable():  # the common case, one C loop; lone surrogates are not printable
        return text
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name's byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


MAX_JSON_DEPTH = 100  # dataset_info.json, manifests and our markers need 4; user JSON rarely 20


def mode_name(mode):
    """``FIFO``, ``socket``, ``folder``, ... for a ``st_mode``."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special file"


def open_regular(path):
    """Open a file we did not write, for reading in binary; never blocks and never opens a device.

    Anything but a regular file (a symlink to one is followed) is an OSError whose ``strerror`` says
    what it is: a FIFO would block until some other process writes to it, and a device may be
    endless or change state when opened.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"a {mode_name(mode)}, not a regular file; not opened", os.fspath(path))
    # O_NONBLOCK: if a FIFO took the file's place since the stat, opening it still returns at once
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                         | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"a {mode_name(mode)}, not a regular file; not opened", os.fspath(path))
        file = os.fdopen(descriptor, "rb")
        file.raw.name = os.fspath(path)  # as open() names it, for messages (not the descriptor's number)
        return file
    except BaseException:
        os.close(descriptor)
        raise


def format_size(count):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def read_limited(path, limit, what):
    """The bytes of ``path``, a file we did not write, of at most ``limit`` bytes; a one-line UserError
    naming the file otherwise (too large, not a regular file, unreadable). ``what`` names it in the
    message (``"a manifest"``)."""
    shown = printable(path)
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            # read what the file holds, never asking for a buffer of the limit's size up front
            data, chunk = bytearray(), 1 << 20
            while size <= limit and len(data) <= limit:
                block = file.read(min(chunk, limit + 1 - len(data)))
                if not block:
                    break
                data += block
            data = bytes(data)
    except FileNotFoundError:
        raise UserError(f"{shown}: no such file") from None
    except OSError as error:
        raise UserError(f"cannot read {shown} ({error.strerror or error})") from None
    if size > limit or len(data) > limit:
        raise UserError(f"{shown} holds {format_size(max(size, len(data)))}, more than {format_size(limit)}, "
                        f"the most read as {what}; check that it is the right file")
    return data


class JSONTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`: refused before Python's parser recurses."""


# A JSON string literal (the unrolled form, fast on long strings), and anything but a bracket.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text):
    """How deeply ``text`` (JSON) nests arrays and objects, by its brackets outside strings."""
    brackets = _NOT_A_BRACKET.sub("", JSON_STRING.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def parse_json(text, max_depth=MAX_JSON_DEPTH, **options):
    """``json.loads(text, **options)`` for JSON we did not write: nesting deeper than ``max_depth``
    is a :class:`JSONTooDeep` (a ValueError, like every other bad JSON), never a RecursionError."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    # Cheap first: no text holding fewer brackets can nest deeper.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise JSONTooDeep(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise JSONTooDeep(f"nested too deeply for Python's JSON reader (over {max_depth} levels)") from None


def load_json_file(path, limit, what, advice):
    """A JSON file we did not write (dataset_info.json, a marker), bounded in size and depth; any
    problem is a one-line UserError naming the file and ending with ``advice``."""
    data = read_limited(path, limit, what)
    try:
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "not UTF-8"
    except ValueError as error:
        problem = f"not valid JSON: {getattr(error, 'msg', None) or error}"
    raise UserError(f"{printable(path)} is {problem}; {advice}")
