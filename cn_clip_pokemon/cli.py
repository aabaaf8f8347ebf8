"""`cn-clip-pokemon <command>`; `python -m cn_clip_pokemon` does the same.

Each command lives in the module of its stage, which defines ``<slug>_arguments(parser)`` and
``<slug>_command(args) -> int`` (``slug`` is the command name with ``-`` as ``_``). A command marked
``raw`` hands its whole argument list to ``<slug>_main(argv) -> int`` instead (``train`` passes
upstream's own flags through). Modules import torch lazily so ``--help`` stays fast.
"""
import argparse
import importlib
import os
import sys
from pathlib import Path

from cn_clip_pokemon import __version__
from cn_clip_pokemon.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UserError

# A closed output pipe (`cn-clip-pokemon plugins --json | head -1`) ends the command quietly, with
# the shell's usual code for a process stopped by SIGPIPE.
EXIT_BROKEN_PIPE = 141

# name, module, one-line help, raw
COMMANDS = [
    ("demo", "cn_clip_pokemon.demo", "From nothing to a working Pokedex: fetch, build, train, evaluate, classify.", False),
    ("fetch-sprites", "cn_clip_pokemon.sprites", "Fetch the pinned sprite packages and lay them out as a picture folder.", False),
    ("build-dataset", "cn_clip_pokemon.builder", "Build upstream's TSV/JSONL/LMDB dataset from a picture folder.", False),
    ("t2s", "cn_clip_pokemon.pokedex", "Convert file names or a TSV/JSONL/text file from traditional to simplified Chinese.", False),
    ("train", "cn_clip_pokemon.launcher", "Run upstream's cn_clip.training.main on the CPU, one GPU, or many through torchrun.", True),
    ("run-script", "cn_clip_pokemon.scripts", "Run a shipped run script (run_scripts/*.sh) by name; --list them, --copy them out to edit.", False),
    ("classify", "cn_clip_pokemon.inference", "Which Pokemon is this? Top-k names for pictures.", False),
    ("search", "cn_clip_pokemon.inference", "Search a built dataset's pictures by text (or by picture).", False),
    ("evaluate", "cn_clip_pokemon.evaluation", "Zero-shot top-1/top-5 and Recall@1/5/10 of a checkpoint on a dataset split.", False),
    ("serve", "cn_clip_pokemon.serve", "A web page: upload a picture for its top-5 names, search a dataset by text (needs the web extra).", False),
    ("export-hf", "cn_clip_pokemon.huggingface", "Write a checkpoint as a Hugging Face transformers ChineseCLIP folder (needs the hf extra).", False),
    ("patches", "cn_clip_pokemon.patching", "List the patches applied to upstream cn_clip, or --check that they apply.", False),
    ("plugins", "cn_clip_pokemon.cli", "List the loaded plugins, what each registers and from which distribution.", False),
]


class UsageError(UserError):
    """Bad command-line usage: exit 2, like argparse's own errors (the message names the argument)."""


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2, never the usage block plus a
    second line; :func:`main` prints it like every other error."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------- argument types
# Checked while parsing, so a bad value is a usage error before any model is loaded.


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


def fraction(text):
    """An argparse type: a share from 0 up to (not including) 1, such as 0.1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a share such as 0.1)") from None
    if not 0 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be at least 0 and less than 1 (a share such as 0.1), not {text}")
    return value


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


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_name(text):
    """An argparse type: auto, cpu, cuda, cuda:N (or mps/xpu where torch has them)."""
    name = text.strip().lower()
    if name in ("", "auto"):
        return None
    kind, _, index = name.partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda or cuda:N (or auto)")
    return name


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


# --------------------------------------------------------------------------- commands


def plugins_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON (the default is a table)")


def plugins_command(args):
    """Exit 1 when a plugin, or one of its registrations, was skipped (each is listed)."""
    import json

    from cn_clip_pokemon.plugins import anything_skipped, describe_plugins

    described = describe_plugins()
    if args.json:
        print(json.dumps(described, ensure_ascii=False, indent=2))
    else:
        for plugin in described:
            if "skipped" in plugin:
                print(f"{plugin['name']}  (from {plugin['distribution']}): SKIPPED, {plugin['skipped']}")
                continue
            print(f"{plugin['name']}  ({plugin['module']}, from {plugin['distribution']})")
            for hook, names in plugin["registers"].items():
                print(f"  {hook}: {', '.join(names) if names else '(nothing)'}")
            for skip in plugin.get("skipped_registrations", []):
                print(f"  SKIPPED {skip['kind']} {skip['name']}: {skip['skipped']}")
    return EXIT_ERROR if anything_skipped() else 0


def build_parser(only=None):
    """The full parser; with ``only``, just that command's module is imported (faster start)."""
    parser = CommandLineParser(
        prog="cn-clip-pokemon",
        description="Fine-tune Chinese-CLIP on your own pictures, with Pokemon as the worked example.",
        epilog="Run `cn-clip-pokemon COMMAND --help` for a command's options. "
        "Exit codes: 0 done, 1 error (the message says what to do), 2 bad usage, 130 interrupted, "
        "141 output pipe closed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text, raw in COMMANDS:
        slug = name.replace("-", "_")
        if raw:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        getattr(module, f"{slug}_arguments")(command_parser)
        command_parser.set_defaults(_run=getattr(module, f"{slug}_command"))
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from cn_clip_pokemon import plugins

        plugins.decide()  # what each plugin adds is decided once, before any argument means anything
        raw_commands = {name: module for name, module, _, raw in COMMANDS if raw}
        if argv and argv[0] in raw_commands:
            module = importlib.import_module(raw_commands[argv[0]])
            return getattr(module, f"{argv[0].replace('-', '_')}_main")(argv[1:])
        parser = build_parser(only=argv[0] if argv and not argv[0].startswith("-") else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        code = args._run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except UsageError as error:
        print(f"cn-clip-pokemon: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as error:
        print(f"cn-clip-pokemon: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # nothing more can reach the reader; point stdout at /dev/null so the final flush is quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("cn-clip-pokemon: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        # the file system said no (full disk, no permission...): say where, without a traceback
        where = f" {error.filename}" if error.filename else ""
        print(f"cn-clip-pokemon: error:{where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
