"""Apply patches/*.patch to upstream cn_clip in memory, when its training modules are imported.

Upstream stays as installed: an import hook (a meta-path finder, the way pytest rewrites asserts)
reads the source of each module a patch targets (``cn_clip/training/main.py`` ->
``cn_clip.training.main``), applies the patch's hunks in file-name order, and compiles the result.
Nothing is written to site-packages. The same files ``git apply`` to a Chinese-CLIP checkout.

Hunks apply with their exact context, at the line the patch says or the nearest place where the
context matches (like ``git apply``, no fuzz). When one does not match, a PatchError names the patch
file, the hunk and the cn_clip version found.

``cn-clip-pokemon patches`` lists the patches with their headers; ``--check`` verifies that they
apply to (and compile against) the installed cn_clip and exits 1 if not.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cn_clip_pokemon.errors import UserError

SUPPORTED_CN_CLIP = "1.6.0"
PATCHES_PACKAGE = "cn_clip_pokemon.patches"


class PatchError(UserError):
    """A patch does not apply to the installed cn_clip."""


@dataclass
class Patch:
    name: str  # file name, e.g. 0002-device-agnostic-training.patch
    header: str  # the text before the diff: what the patch does and why
    text: str
    files: dict = field(default_factory=dict)  # "cn_clip/training/main.py" -> unidiff PatchedFile

    @property
    def title(self):
        return self.header.strip().splitlines()[0] if self.header.strip() else self.name


def cn_clip_version():
    from importlib import metadata

    try:
        return metadata.version("cn_clip")
    except metadata.PackageNotFoundError:
        return "unknown (no cn_clip distribution found)"


def _patch_sources():
    """(name, text) of every *.patch, sorted by name; the installed package first, else the repo's."""
    candidates = []
    try:
        from importlib import resources

        candidates.append(resources.files(PATCHES_PACKAGE))
    except (ModuleNotFoundError, TypeError):
        pass  # a source checkout or an editable install: the folder is at the repository's top
    package_dir = Path(__file__).resolve().parent
    candidates += [package_dir / "patches", package_dir.parent / "patches"]
    for folder in candidates:
        try:
            entries = [entry for entry in folder.iterdir() if entry.name.endswith(".patch")]
        except (FileNotFoundError, NotADirectoryError, OSError):
            continue
        if entries:
            return sorted(((e.name, e.read_text(encoding="utf-8")) for e in entries), key=lambda p: p[0])
    raise PatchError(
        f"no *.patch files found (looked in package {PATCHES_PACKAGE} and {package_dir.parent / 'patches'}); "
        "reinstall cn-clip-pokemon"
    )


def load_patches():
    """Every patch, parsed, in the order it applies."""
    from unidiff import PatchSet

    patches = []
    for name, text in _patch_sources():
        first_diff = min(
            (i for i in (text.find("\ndiff "), text.find("\n--- ")) if i >= 0), default=-1
        )
        header = text[: first_diff + 1] if first_diff >= 0 else ""
        try:
            parsed = PatchSet(text)
        except Exception as error:  # unidiff.UnidiffParseError and friends
            raise PatchError(f"patch {name} is not a valid unified diff: {error}") from error
        patch = Patch(name=name, header=header, text=text)
        for patched_file in parsed:
            patch.files[patched_file.path] = patched_file
        patches.append(patch)
    return patches


def module_name_for(path):
    """cn_clip/training/main.py -> cn_clip.training.main."""
    return path[: -len(".py")].replace("/", ".") if path.endswith(".py") else None


def apply_patched_file(source, patched_file, patch_name, origin, version=None):
    """``source`` with every hunk of one file's diff applied; PatchError if a hunk's context is absent."""
    lines = source.splitlines(keepends=True)
    delta = 0  # how far the current text has moved from the line numbers the patch was made against
    lower_bound = 0  # hunks apply in order, never before the end of the previous one
    hunks = list(patched_file)
    for number, hunk in enumerate(hunks, start=1):
        expected, replacement = _hunk_sides(hunk)
        stated = max(hunk.source_start - 1, 0) if expected else hunk.source_start
        guess = stated + delta
        position = _find_block(lines, expected, guess, lower_bound)
        if position is None:
            header = str(hunk).splitlines()[0]
            raise PatchError(
                f"patch {patch_name} does not apply to cn_clip {version or cn_clip_version()}: "
                f"hunk {number}/{len(hunks)} `{header}` of {patched_file.path} does not match {origin}. "
                f"cn-clip-pokemon supports cn_clip {SUPPORTED_CN_CLIP}: pip install cn_clip=={SUPPORTED_CN_CLIP}"
            )
        lines[position : position + len(expected)] = replacement
        delta += (position - guess) + len(replacement) - len(expected)
        lower_bound = position + len(replacement)
    return "".join(lines)


def _hunk_sides(hunk):
    """The hunk's old and new lines, honouring "\\ No newline at end of file" markers."""
    expected, replacement = [], []
    previous = None
    for line in hunk:
        if line.line_type == "\\":  # the line before has no newline in the side(s) it belongs to
            if previous in (" ", "-"):
                expected[-1] = expected[-1].rstrip("\n")
            if previous in (" ", "+"):
                replacement[-1] = replacement[-1].rstrip("\n")
            continue
        if line.line_type in (" ", "-"):
            expected.append(line.value)
        if line.line_type in (" ", "+"):
            replacement.append(line.value)
        previous = line.line_type
    return expected, replacement


def _find_block(lines, block, guess, lower_bound):
    """Index where ``block`` matches ``lines`` exactly, nearest to ``guess`` and not before ``lower_bound``."""
    size = len(block)
    last = len(lines) - size
    if last < lower_bound:
        return None
    guess = min(max(guess, lower_bound), last)
    for distance in range(0, max(guess - lower_bound, last - guess) + 1):
        for position in (guess - distance, guess + distance):
            if lower_bound <= position <= last and lines[position : position + size] == block:
                return position
    return None


def _original_spec(module_name):
    """Where upstream's module lives, found by the normal path machinery (not by this hook).

    Only the top-level package is looked up: importing a parent package to search its ``__path__``
    would run upstream's ``cn_clip/clip/__init__.py``, which imports the unpatched model module
    (and, with flash-attn 2 installed, fails there).
    """
    top, _, rest = module_name.partition(".")
    top_spec = importlib.machinery.PathFinder.find_spec(top)
    if top_spec is None or not top_spec.submodule_search_locations:
        return None
    parts = rest.split(".") if rest else []
    for location in top_spec.submodule_search_locations:
        candidate = Path(location, *parts[:-1], parts[-1] + ".py") if parts else Path(location, "__init__.py")
        if candidate.is_file():
            return importlib.util.spec_from_file_location(module_name, candidate)
    return None


def patched_sources(patches=None):
    """module name -> (origin path, patched source, [patch names]) for every module a patch touches."""
    patches = load_patches() if patches is None else patches
    version = cn_clip_version()
    results = {}
    for patch in patches:
        for path, patched_file in patch.files.items():
            module_name = module_name_for(path)
            if module_name is None:
                raise PatchError(f"patch {patch.name} touches {path}, which is not a Python module")
            if module_name not in results:
                spec = _original_spec(module_name)
                if spec is None or not spec.origin or not Path(spec.origin).is_file():
                    raise PatchError(
                        f"patch {patch.name} targets {path}, but module {module_name} is not installed "
                        f"(cn_clip {version}); pip install cn_clip=={SUPPORTED_CN_CLIP}"
                    )
                results[module_name] = (spec.origin, Path(spec.origin).read_text(encoding="utf-8"), [])
            origin, source, applied = results[module_name]
            source = apply_patched_file(source, patched_file, patch.name, origin, version)
            results[module_name] = (origin, source, applied + [patch.name])
    return results


class PatchedSourceLoader(importlib.abc.Loader):
    """Compiles a module from its patched source; tracebacks show the patched lines."""

    def __init__(self, module_name, origin, source, patch_names):
        self.module_name = module_name
        self.origin = origin
        self.source = source
        self.patch_names = patch_names
        # a name of its own, so that a traceback never pairs patched line numbers with the file on disk
        self.code_filename = f"{origin} (patched by cn_clip_pokemon)"

    def create_module(self, spec):
        return None  # the default module object

    def get_source(self, fullname):
        return self.source

    def get_code(self, fullname):
        """The compiled patched source; runpy asks for it (upstream's scripts run as ``__main__``)."""
        linecache.cache[self.code_filename] = (
            len(self.source),
            None,  # no mtime: linecache.checkcache keeps the entry
            self.source.splitlines(keepends=True),
            self.code_filename,
        )
        return compile(self.source, self.code_filename, "exec", dont_inherit=True)

    def is_package(self, fullname):
        return False  # patches target modules, never a package's __init__

    def exec_module(self, module):
        module.__cn_clip_pokemon_patches__ = list(self.patch_names)
        exec(self.get_code(self.module_name), module.__dict__)


class PatchFinder(importlib.abc.MetaPathFinder):
    """Finds the cn_clip modules that patches target and hands them to PatchedSourceLoader."""

    def __init__(self, sources):
        self.sources = sources  # module name -> (origin, patched source, patch names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.sources:
            return None
        origin, source, patch_names = self.sources[fullname]
        loader = PatchedSourceLoader(fullname, origin, source, patch_names)
        return importlib.util.spec_from_file_location(fullname, origin, loader=loader)


_finder = None


def install():
    """Install the import hook (once); the patched cn_clip modules load on their first import.

    Raises PatchError if a patch does not apply. A targeted module already imported unpatched (say
    cn_clip.training.data, for its LMDBDataset) is dropped from sys.modules with every other cn_clip
    module, so that the next import gives the patched code; references taken earlier keep the unpatched module, which stays usable.
    """
    global _finder
    if _finder is not None:
        return _finder
    sources = patched_sources()
    stale = [name for name in sources if name in sys.modules and not hasattr(sys.modules[name], "__cn_clip_pokemon_patches__")]
    if stale:
        # other cn_clip modules hold names taken from the unpatched ones (cn_clip.clip re-exports
        # the model's functions): drop them all, so every later import sees one patched cn_clip
        for name in [name for name in sys.modules if name == "cn_clip" or name.startswith("cn_clip.")]:
            del sys.modules[name]
    _finder = PatchFinder(sources)
    sys.meta_path.insert(0, _finder)
    return _finder


def is_installed():
    return _finder is not None


# --- `cn-clip-pokemon patches` ------------------------------------------------------------------


def patches_arguments(parser):
    parser.description = (
        "List the patches cn-clip-pokemon applies in memory to upstream cn_clip's training code "
        "(never to the installed files), with what each does and why. The same files apply to a "
        "Chinese-CLIP source checkout with `git apply patches/*.patch`."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify that every patch applies to the installed cn_clip and the result compiles "
        "(exit 1 if not)",
    )
    parser.add_argument("--diff", action="store_true", help="print each patch in full")


def patches_command(args):
    patches = load_patches()
    version = cn_clip_version()
    if args.check:
        sources = patched_sources(patches)  # raises PatchError (exit 1) naming the patch and hunk
        for module_name, (origin, source, _) in sources.items():
            try:
                compile(source, origin, "exec", dont_inherit=True)
            except SyntaxError as error:
                raise PatchError(f"{module_name} does not compile once patched: {error}") from error
        print(f"all {len(patches)} patches apply to cn_clip {version} ({len(sources)} modules)")
        return 0
    print(f"cn_clip {version} (patches made against {SUPPORTED_CN_CLIP})")
    for patch in patches:
        print()
        if args.diff:
            print(f"=== {patch.name}")
            print(patch.text)
            continue
        changes = ", ".join(
            f"{path} (+{f.added} -{f.removed})" for path, f in patch.files.items()
        )
        print(f"{patch.name}: {changes}")
        for line in patch.header.strip().splitlines():
            print(f"    {line}")
    return 0
