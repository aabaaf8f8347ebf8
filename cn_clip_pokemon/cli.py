"""`cn-clip-pokemon <command>`; `python -m cn_clip_pokemon` does the same.

Each command lives in the module of its stage, which defines ``<slug>_arguments(parser)`` and
``<slug>_command(args) -> int`` (``slug`` is the command name with ``-`` as ``_``). A command marked
``raw`` hands its whole argument list to ``<slug>_main(argv) -> int`` instead (``train`` passes
upstream's own flags through). Modules import torch lazily so ``--help`` stays fast.
"""
import importlib
import os
import sys

from cn_clip_pokemon import plugins
from cn_clip_pokemon.arguments import CommandLineParser, UsageError
from cn_clip_pokemon.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UserError
from cn_clip_pokemon.version import __version__

# A closed output pipe (`cn-clip-pokemon plugins --json | head -1`) ends the command quietly, with
# the shell's usual code for a process stopped by SIGPIPE.
EXIT_BROKEN_PIPE = 141

# name, module, one-line help, raw
COMMANDS = [
    ("demo", "cn_clip_pokemon.demo", "From nothing to a working Pokedex: fetch, build, train, evaluate, classify.", False),
    ("fetch-sprites", "cn_clip_pokemon.sprites", "Fetch the pinned sprite packages and lay them out as a picture folder.", False),
    ("build-dataset", "cn_clip_pokemon.builder.command", "Build upstream's TSV/JSONL/LMDB dataset from a picture folder.", False),
    ("t2s", "cn_clip_pokemon.pokedex", "Convert file names or a TSV/JSONL/text file from traditional to simplified Chinese.", False),
    ("train", "cn_clip_pokemon.launcher", "Run upstream's cn_clip.training.main on the CPU, one GPU, or many through torchrun.", True),
    ("run-script", "cn_clip_pokemon.scripts", "Run a shipped run script (run_scripts/*.sh) by name; --list them, --copy them out to edit.", False),
    ("classify", "cn_clip_pokemon.classify", "Which Pokemon is this? Top-k names for pictures.", False),
    ("search", "cn_clip_pokemon.search", "Search a built dataset's pictures by text (or by picture).", False),
    ("evaluate", "cn_clip_pokemon.evaluation", "Zero-shot top-1/top-5 and Recall@1/5/10 of a checkpoint on a dataset split.", False),
    ("serve", "cn_clip_pokemon.serve", "A web page: upload a picture for its top-5 names, search a dataset by text (needs the web extra).", False),
    ("export-hf", "cn_clip_pokemon.hf_export", "Write a checkpoint as a Hugging Face transformers ChineseCLIP folder (needs the hf extra).", False),
    ("patches", "cn_clip_pokemon.patching", "List the patches applied to upstream cn_clip, or --check that they apply.", False),
    ("plugins", "cn_clip_pokemon.plugins", "List the loaded plugins, what each registers and from which distribution.", False),
]


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
