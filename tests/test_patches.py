"""patches/*.patch: git-apply to a pristine cn_clip source copy, and applied in memory by the hook."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cn_clip_pokemon import patching
from cn_clip_pokemon.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
PATCH_FILES = sorted((REPO / "patches").glob("*.patch"))


def installed_cn_clip():
    import importlib.util

    return Path(importlib.util.find_spec("cn_clip").origin).parent


@pytest.fixture(scope="module")
def pristine_checkout(tmp_path_factory):
    """A git repository laid out like a Chinese-CLIP checkout (cn_clip/ at the top), untouched."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: `git apply --check` cannot be run")
    root = tmp_path_factory.mktemp("chinese-clip")
    shutil.copytree(installed_cn_clip(), root / "cn_clip", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def test_the_patches_are_there_and_say_why():
    assert [p.name for p in PATCH_FILES] == [p.name for p in patching.load_patches()]
    assert len(PATCH_FILES) >= 6
    for patch in patching.load_patches():
        assert len(patch.header.split()) > 15, f"{patch.name} needs a header saying why"
        assert patch.files and all(path.startswith("cn_clip/") for path in patch.files)


def test_each_patch_git_applies_in_order_to_pristine_cn_clip(pristine_checkout):
    for patch_file in PATCH_FILES:
        check = subprocess.run(
            ["git", "apply", "--check", str(patch_file)], cwd=pristine_checkout, capture_output=True, text=True
        )
        assert check.returncode == 0, f"{patch_file.name}: {check.stderr}"
        subprocess.run(["git", "apply", str(patch_file)], cwd=pristine_checkout, check=True)
    # the in-memory applier gives exactly what git gives
    for module_name, (_, source, _) in patching.patched_sources().items():
        relative = module_name.replace(".", "/") + ".py"
        assert source == (pristine_checkout / relative).read_text(encoding="utf-8"), relative


def test_hunks_still_apply_when_upstream_lines_move():
    patch = next(p for p in patching.load_patches() if "cn_clip/training/main.py" in p.files)
    original = (installed_cn_clip() / "training" / "main.py").read_text(encoding="utf-8")
    expected = patching.apply_patched_file(original, patch.files["cn_clip/training/main.py"], patch.name, "main.py")
    shifted = "# a new comment\n# and another\n" + original
    assert patching.apply_patched_file(
        shifted, patch.files["cn_clip/training/main.py"], patch.name, "main.py"
    ) == "# a new comment\n# and another\n" + expected


def test_a_patch_that_no_longer_applies_names_file_hunk_and_version():
    patch = next(p for p in patching.load_patches() if "cn_clip/training/main.py" in p.files)
    patched_file = patch.files["cn_clip/training/main.py"]
    changed = (installed_cn_clip() / "training" / "main.py").read_text(encoding="utf-8").replace(
        "def main(", "def main_renamed_upstream("
    )
    with pytest.raises(patching.PatchError) as error:
        patching.apply_patched_file(changed, patched_file, patch.name, "/somewhere/main.py", version="9.9.9")
    message = str(error.value)
    assert patch.name in message and "hunk " in message and "@@ -" in message
    assert "cn_clip 9.9.9" in message and "/somewhere/main.py" in message


def test_patches_check_command(monkeypatch, capsys):
    assert cli_main(["patches", "--check"]) == 0
    assert f"all {len(PATCH_FILES)} patches apply" in capsys.readouterr().out
    assert cli_main(["patches"]) == 0
    listing = capsys.readouterr().out
    for patch in patching.load_patches():
        assert patch.name in listing and patch.title in listing

    # a broken patch: exit 1 with the patch named, no traceback
    sources = patching._patch_sources()
    name, text = sources[1]
    broken = text.replace("\n     ", "\n     # changed context\n     ", 1)
    monkeypatch.setattr(patching, "_patch_sources", lambda: [sources[0], (name, broken)] + sources[2:])
    assert cli_main(["patches", "--check"]) == 1
    error = capsys.readouterr().err
    assert name in error and "Traceback" not in error


def test_import_hook_patches_upstream_in_memory_only():
    """In a fresh interpreter: the hook gives the patched modules; the installed files stay as they were."""
    main_file = installed_cn_clip() / "training" / "main.py"
    before = main_file.read_bytes()
    script = textwrap.dedent(
        """
        import inspect, linecache, traceback
        from cn_clip_pokemon import patching
        patching.install()
        import cn_clip.training.main as m
        import cn_clip.training.data as d
        assert "argv" in inspect.signature(m.main).parameters
        assert len(m.__cn_clip_pokemon_patches__) >= 4, m.__cn_clip_pokemon_patches__
        assert hasattr(d, "model_config_file") and m.model_config_file is d.model_config_file
        assert m.__file__.endswith("cn_clip/training/main.py")
        # tracebacks show the patched lines
        code = m.main.__code__
        assert linecache.getline(code.co_filename, code.co_firstlineno).startswith("def main(argv=None)")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert main_file.read_bytes() == before


def test_modules_imported_before_the_hook_are_imported_again_patched():
    script = textwrap.dedent(
        """
        import inspect
        import cn_clip.training.params as early
        from cn_clip.training.data import LMDBDataset
        from cn_clip_pokemon import patching
        patching.install()
        import cn_clip.training.params as params
        import cn_clip.training.main as main
        assert "argv" in inspect.signature(params.parse_args).parameters
        assert "argv" not in inspect.signature(early.parse_args).parameters  # an old reference stays as it was
        assert main.parse_args is params.parse_args and hasattr(main, "__cn_clip_pokemon_patches__")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_all_patches_apply_at_once_as_users_run_it(tmp_path):
    """`git apply patches/*.patch` in a Chinese-CLIP checkout (the README's instruction)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: `git apply` cannot be run")
    shutil.copytree(installed_cn_clip(), tmp_path / "cn_clip", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run(["git", "apply", *map(str, PATCH_FILES)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for module_name, (_, source, _) in patching.patched_sources().items():
        relative = module_name.replace(".", "/") + ".py"
        assert source == (tmp_path / relative).read_text(encoding="utf-8"), relative


def lines_rewritten(patches):
    """Where a patch removes (or rewrites) a line an earlier patch added, as messages.

    Each line of each patched file carries the name of the patch that added it (None: upstream's);
    hunks are placed as the in-memory applier places them.
    """
    lines, added_by, messages = {}, {}, []
    for patch in patches:
        for path, patched_file in patch.files.items():
            if path not in lines:
                lines[path] = (installed_cn_clip().parent / path).read_text(encoding="utf-8").splitlines(keepends=True)
                added_by[path] = [None] * len(lines[path])
            text, origins = lines[path], added_by[path]
            delta = lower_bound = 0
            for hunk in patched_file:
                expected, replacement = patching._hunk_sides(hunk)
                guess = (max(hunk.source_start - 1, 0) if expected else hunk.source_start) + delta
                position = patching._find_block(text, expected, guess, lower_bound)
                assert position is not None, f"{patch.name} does not apply to {path}"
                old_origins = iter(origins[position : position + len(expected)])
                new_origins = []
                for line in hunk:
                    if line.line_type == "+":
                        new_origins.append(patch.name)
                    elif line.line_type in (" ", "-"):
                        origin = next(old_origins)
                        if line.line_type == " ":
                            new_origins.append(origin)
                        elif origin is not None:
                            messages.append(f"{patch.name} removes `{line.value.strip()}` from {path}, a line {origin} added")
                text[position : position + len(expected)] = replacement
                origins[position : position + len(expected)] = new_origins
                delta += (position - guess) + len(replacement) - len(expected)
                lower_bound = position + len(replacement)
    return messages


def test_no_patch_rewrites_a_line_an_earlier_patch_added():
    """Patches read like a PR series: each changes upstream's lines only, and a line's final form is in
    the patch whose concern it is, so a reviewer of one patch never reviews another's lines again."""
    assert lines_rewritten(patching.load_patches()) == []


def test_a_patch_rewriting_an_earlier_patchs_line_is_caught():
    import difflib

    from unidiff import PatchSet

    patches = patching.load_patches()
    first = next(p for p in patches if "cn_clip/training/scheduler.py" in p.files)
    path = "cn_clip/training/scheduler.py"
    patched = patching.apply_patched_file(
        (installed_cn_clip() / "training" / "scheduler.py").read_text(encoding="utf-8"), first.files[path], first.name, path
    )
    rewritten = patched.replace("        lr = float(lr)\n", "        lr = float(lr)  # rewritten\n")
    assert rewritten != patched
    diff = "".join(difflib.unified_diff(
        patched.splitlines(keepends=True), rewritten.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    ))
    later = patching.Patch(name="9999-rewrite.patch", header="", text=diff)
    later.files = {f.path: f for f in PatchSet(diff)}
    assert lines_rewritten([first, later]) == [
        f"9999-rewrite.patch removes `lr = float(lr)` from {path}, a line {first.name} added"
    ]


def test_every_name_the_patches_import_from_cn_clip_pokemon_exists():
    """The patched upstream imports these by name (some inside functions, so only when that code
    runs): moving one out of its module must update the patch too."""
    import importlib
    import re

    imported = []
    for patch in patching.load_patches():
        for path, patched_file in patch.files.items():
            for hunk in patched_file:
                for line in hunk:
                    found = re.match(r"\s*from (cn_clip_pokemon[\w.]*) import (.+)", line.value)
                    if line.line_type == "+" and found:
                        names = [name.strip() for name in found.group(2).split(",")]
                        imported += [(patch.name, found.group(1), name) for name in names]
    assert len(imported) >= 20
    missing = [
        f"{patch_name}: {module}.{name}" for patch_name, module, name in imported
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing == []
