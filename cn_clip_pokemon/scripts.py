"""`cn-clip-pokemon run-script`: the run scripts of run_scripts/, for a pip install as for a clone.

The wheel carries the repository's run_scripts/ as the package folder ``cn_clip_pokemon/run_scripts``
(setup.py maps it, as it does patches/), so

    cn-clip-pokemon run-script pokemon_finetune_vit-b-16 ${DATAPATH} [more `cn-clip-pokemon train` flags]

runs the same bash file that `bash run_scripts/pokemon_finetune_vit-b-16.sh ${DATAPATH}` runs in a
clone. ``--list`` names them, ``--copy DIR`` copies them out to edit. The scripts call
`cn-clip-pokemon train`; the folder of the `cn-clip-pokemon` that is running goes first on their
PATH, so they train with this installation even when its environment is not activated.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from cn_clip_pokemon.arguments import UsageError, output_folder
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write

PACKAGE_DIR = Path(__file__).resolve().parent
SUFFIX = ".sh"
# the usage line of a script's header comment: "#   bash run_scripts/NAME.sh ARGUMENTS"
USAGE_LINE = re.compile(r"^#\s+bash run_scripts/(?P<file>\S+\.sh)\s+(?P<arguments>.*)$")


def run_scripts_folder():
    """Where the run scripts are: inside the installed package (a wheel), else the repository's
    run_scripts/ (a clone, or an editable install)."""
    installed = PACKAGE_DIR / "run_scripts"
    if installed.is_dir():
        return installed
    checkout = PACKAGE_DIR.parent
    if (checkout / "setup.py").is_file() and (checkout / "run_scripts").is_dir():
        return checkout / "run_scripts"
    raise UserError(f"no run scripts found in {installed}: reinstall cn-clip-pokemon")


@dataclass
class RunScript:
    name: str  # the file name without .sh
    path: Path
    summary: str  # the header's first comment line
    arguments: str  # what the header's usage line gives after the script, e.g. "${DATAPATH} [more ...]"

    @property
    def required(self):
        """The positional arguments the script needs (the words of its usage before the first [...])."""
        return self.arguments.split("[", 1)[0].split()

    @property
    def usage(self):
        return f"cn-clip-pokemon run-script {self.name} {self.arguments}".rstrip()


def _describe(path):
    summary, arguments = "", "${DATAPATH}"
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        if not summary and line.strip("# "):
            summary = line.lstrip("#").strip()
        usage = USAGE_LINE.match(line)
        if usage and usage.group("file") == path.name:
            arguments = usage.group("arguments").strip()
    return RunScript(path.name[: -len(SUFFIX)], path, summary, arguments)


def list_run_scripts(folder=None):
    """Every shipped run script, by name."""
    folder = folder or run_scripts_folder()
    return [_describe(path) for path in sorted(folder.glob(f"*{SUFFIX}"))]


def find_run_script(name, folder=None):
    """The run script called ``name`` (with or without .sh); a usage error naming the others if none."""
    scripts = list_run_scripts(folder)
    wanted = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    for script in scripts:
        if script.name == wanted:
            return script
    raise UsageError(f"no run script {name!r}; the run scripts are: {', '.join(s.name for s in scripts)}")


def script_help(script):
    """What `run-script NAME --help` prints: the script's header comment (what it needs, what it
    writes, why its numbers), with where it is."""
    lines = []
    for line in script.path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join([f"{script.usage}", f"({script.path})", "", *lines])


def _console_script_folder():
    """The folder holding the `cn-clip-pokemon` of this installation, or None."""
    candidates = [Path(sys.argv[0]).parent] if Path(sys.argv[0]).name == "cn-clip-pokemon" else []
    candidates += [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    for folder in candidates:
        if (folder / "cn-clip-pokemon").is_file():
            return folder.resolve()
    return None


def script_environment():
    """The environment a run script gets: this installation's `cn-clip-pokemon` first on PATH."""
    env = dict(os.environ)
    folder = _console_script_folder()
    if folder is not None:
        env["PATH"] = os.pathsep.join([str(folder), env.get("PATH", "")]) if env.get("PATH") else str(folder)
    return env


def copy_run_scripts(target, folder=None):
    """Copy every run script into ``target``; returns [(path, "copied" | "unchanged")]. A file there
    with other content is never overwritten: the whole copy is refused first, naming it."""
    scripts = list_run_scripts(folder)
    plan = []
    for script in scripts:
        destination = target / script.path.name
        content = script.path.read_bytes()
        if destination.is_dir():
            raise UserError(f"{destination} is a folder; copy the run scripts into another folder")
        if destination.exists():
            if destination.read_bytes() != content:
                raise UserError(
                    f"{destination} exists and differs from the shipped {script.path.name}: nothing was copied. "
                    "Move it away, or give --copy another folder"
                )
            plan.append((destination, content, "unchanged"))
        else:
            plan.append((destination, content, "copied"))
    done = []
    for destination, content, what in plan:
        if what == "copied":
            with atomic_write(destination) as f:
                f.write(content)
            destination.chmod(0o755)
        done.append((destination, what))
    return done


# --------------------------------------------------------------------------- the command


def run_script_arguments(parser):
    parser.description = (
        "Run one of the shipped run scripts (bash files that call `cn-clip-pokemon train` with a "
        "whole recipe), the same files as run_scripts/ in a clone: "
        "`cn-clip-pokemon run-script pokemon_finetune_vit-b-16 ${DATAPATH}` is "
        "`bash run_scripts/pokemon_finetune_vit-b-16.sh ${DATAPATH}`. Arguments after the script's "
        "own are passed to `cn-clip-pokemon train` and win, e.g. --max-epochs 1."
    )
    parser.epilog = "Exit code: the script's (1 when something it needs is missing, with what to do)."
    parser.add_argument("--list", action="store_true", help="list the run scripts with what each does, and where they are")
    parser.add_argument(
        "--copy",
        metavar="DIR",
        type=output_folder,
        default=None,
        help="copy the run scripts into DIR to edit them (a file there with other content is never "
        "overwritten), then run them with `bash DIR/NAME.sh ${DATAPATH}`",
    )
    parser.add_argument("script", nargs="?", metavar="NAME", help="a run script, with or without .sh (see --list)")
    parser.add_argument(
        "script_arguments",
        nargs="...",
        metavar="ARGS",
        help="the script's arguments, usually ${DATAPATH}, then more `cn-clip-pokemon train` flags",
    )


def run_script_command(args):
    if args.list or args.copy is not None:
        if args.script is not None:
            raise UsageError("give --list, --copy DIR or a script NAME, not both")
        if args.list and args.copy is not None:
            raise UsageError("give --list or --copy DIR, not both")
    if args.list:
        scripts = list_run_scripts()
        print(f"run scripts in {run_scripts_folder()}:")
        width = max(len(script.name) for script in scripts)
        for script in scripts:
            print(f"  {script.name:<{width}}  {script.summary}")
        print("run one: cn-clip-pokemon run-script NAME ${DATAPATH} [more `cn-clip-pokemon train` flags]")
        return 0
    if args.copy is not None:
        target = args.copy
        for path, what in copy_run_scripts(target):
            print(f"{what}: {path}")
        print(f"edit them, then run: bash {target / 'pokemon_finetune_vit-b-16.sh'} ${{DATAPATH}}")
        return 0
    if args.script is None:
        raise UsageError("give a run script NAME (see --list), --list or --copy DIR")
    script = find_run_script(args.script)
    if args.script_arguments[:1] in (["-h"], ["--help"]):
        print(script_help(script))
        return 0
    if len(args.script_arguments) < len(script.required):
        raise UsageError(f"{script.name} needs {' '.join(script.required)}: {script.usage}")
    bash = shutil.which("bash")
    if bash is None:
        raise UserError(f"bash not found: {script.path} is a bash script; install bash, or run its `cn-clip-pokemon train` command by hand")
    sys.stdout.flush()
    return subprocess.run([bash, str(script.path), *args.script_arguments], env=script_environment()).returncode
