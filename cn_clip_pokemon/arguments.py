"""Command-line arguments shared by every command: the usage error, the parser that reports it in
one line, and argparse types that check a value while parsing (so a bad value is a usage error
before any model is loaded). Below every command module; imports nothing of theirs."""
import argparse
from pathlib import Path

from cn_clip_pokemon.errors import UserError


class UsageError(UserError):
    """Bad command-line usage: exit 2, like argparse's own errors (the message names the argument)."""


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2, never the usage block plus a
    second line; :func:`main` prints it like every other error."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _whole_number_at_least(minimum, text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}" if minimum else f"must be 0 or more, not {value}")
    return value


def positive_int(text):
    """An argparse type: a whole number of at least 1."""
    return _whole_number_at_least(1, text)


def non_negative_int(text):
    """An argparse type: a whole number of at least 0."""
    return _whole_number_at_least(0, text)


def whole_number_between(low, high):
    """An argparse type: a whole number from ``low`` to ``high`` (its name in messages: ``low-high``)."""

    def whole_number(text):
        value = _whole_number_at_least(low, text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {value}")
        return value

    whole_number.__name__ = f"whole number {low}-{high}"
    return whole_number


port_number = whole_number_between(1, 65535)
port_number.__doc__ = "An argparse type: a TCP port, 1 to 65535."


def _number_in(text, what, inside, rule):
    """``text`` as a float that ``inside`` accepts (NaN never is), else an argparse error naming ``rule``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not inside(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
    return value


def fraction(text):
    """An argparse type: a share from 0 up to (not including) 1, such as 0.1."""
    return _number_in(text, "a number (a share such as 0.1)", lambda value: 0 <= value < 1,
                      "at least 0 and less than 1 (a share such as 0.1)")


def minutes(text):
    """An argparse type: a number of minutes, 0 or more (0: no limit)."""
    return _number_in(text, "a number of minutes", lambda value: 0 <= value < float("inf"), "0 (no limit) or more minutes")


def prompt_template(text):
    """An argparse type: a template with one {} for the name (dataset_format's rule)."""
    from cn_clip_pokemon.dataset_format import check_template

    try:
        return check_template(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def search_text(text):
    """An argparse type: a text with something besides spaces."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the search text is empty: give a name or a description, or --image PICTURE")
    return text


def device_name(text):
    """An argparse type: auto, cpu, cuda, cuda:N (or mps/xpu where torch has them), by devices' one rule."""
    from cn_clip_pokemon.devices import check_device_name

    try:
        return check_device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _first_existing(path):
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def output_file(text):
    """An argparse type: a file path that can be written (not a folder; no file where a folder must be)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give a file name such as {path / 'grid.png'}")
    existing = _first_existing(path.parent)
    if existing is not None and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: {existing} is a file, not a folder")
    return path


def output_folder(text):
    """An argparse type: a folder path that exists as a folder or can be made."""
    path = Path(text).expanduser()
    existing = _first_existing(path)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise argparse.ArgumentTypeError(f"{path} {what}, not a folder")
    return path
