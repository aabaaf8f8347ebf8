"""`cn-clip-pokemon <command>`; `python -m cn_clip_pokemon` does the same.

Each command lives in the module of its stage, which defines ``<slug>_arguments(parser)`` and
``<slug>_command(args) -> int`` (``slug`` is the command name with ``-`` as ``_``). A command marked
``raw`` hands its whole argument list to ``<slug>_main(argv) -> int`` instead (``train`` passes
upstream's own flags through). Modules import torch lazily so ``--help`` stays fast.
"""
import argparse
import importlib
import sys

from cn_clip_pokemon import __version__
from cn_clip_pokemon.errors import EXIT_ERROR, EXIT_INTERRUPTED, UserError

# name, module, one-line help, raw
COMMANDS = [
    ("demo", "cn_clip_pokemon.demo", "From nothing to a working Pokedex: fetch, build, train, evaluate, classify.", False),
    ("fetch-sprites", "cn_clip_pokemon.sprites", "Fetch the pinned sprite packages and lay them out as a picture folder.", False),
    ("build-dataset", "cn_clip_pokemon.builder", "Build upstream's TSV/JSONL/LMDB dataset from a picture folder.", False),
    ("t2s", "cn_clip_pokemon.pokedex", "Convert file names or a TSV/JSONL/text file from traditional to simplified Chinese.", False),
    ("train", "cn_clip_pokemon.launcher", "Run upstream's cn_clip.training.main on the CPU, one GPU, or many through torchrun.", True),
    ("classify", "cn_clip_pokemon.inference", "Which Pokemon is this? Top-k names for pictures.", False),
    ("search", "cn_clip_pokemon.inference", "Search a built dataset's pictures by text (or by picture).", False),
    ("evaluate", "cn_clip_pokemon.evaluation", "Zero-shot top-1/top-5 and Recall@1/5/10 of a checkpoint on a dataset split.", False),
    ("patches", "cn_clip_pokemon.patching", "List the patches applied to upstream cn_clip, or --check that they apply.", False),
    ("plugins", "cn_clip_pokemon.cli", "List the loaded plugins, what each registers and from which distribution.", False),
]


def plugins_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON (the default is a table)")


def plugins_command(args):
    import json

    from cn_clip_pokemon.plugins import describe_plugins

    described = describe_plugins()
    if args.json:
        print(json.dumps(described, ensure_ascii=False, indent=2))
        return 0
    for plugin in described:
        print(f"{plugin['name']}  ({plugin['module']}, from {plugin['distribution']})")
        for hook, names in plugin["registers"].items():
            print(f"  {hook}: {', '.join(names) if names else '(nothing)'}")
    return 0


def build_parser(only=None):
    """The full parser; with ``only``, just that command's module is imported (faster start)."""
    parser = argparse.ArgumentParser(
        prog="cn-clip-pokemon",
        description="Fine-tune Chinese-CLIP on your own pictures, with Pokemon as the worked example.",
        epilog="Run `cn-clip-pokemon COMMAND --help` for a command's options. "
        "Exit codes: 0 done, 1 error (the message says what to do), 2 bad usage, 130 interrupted.",
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
        raw_commands = {name: module for name, module, _, raw in COMMANDS if raw}
        if argv and argv[0] in raw_commands:
            module = importlib.import_module(raw_commands[argv[0]])
            return getattr(module, f"{argv[0].replace('-', '_')}_main")(argv[1:])
        parser = build_parser(only=argv[0] if argv and not argv[0].startswith("-") else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args._run(args)
    except UserError as error:
        print(f"cn-clip-pokemon: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cn-clip-pokemon: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
