"""The package's shape: no import loops (imports inside functions and modules named in strings
count), no module longer than ~600 lines, and the dataset layout spelled in one module."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cn_clip_pokemon"
MAX_LINES = 600
# the one module that may spell the dataset's file and folder names
LAYOUT_MODULE = "cn_clip_pokemon.dataset_format"


def package_modules(root=PACKAGE):
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(modules):
    """module -> the package modules it imports, wherever the import statement sits."""

    def owner(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        edges = set()
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                named = [f"{base}.{alias.name}" for alias in node.names]
                submodules = [target for target in named if target in modules]
                edges.update(submodules)
                if len(submodules) < len(named):
                    edges.add(owner(base))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value and node.value in modules:
                # a submodule imported by name (cli's command table, plugin lists); the bare package
                # name is `python -m PACKAGE` for a new process, not an import
                edges.add(node.value)
        edges.discard(None)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_loops(graph):
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, loops = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    loops.append(sorted(component))
    return loops


def test_the_loop_finder_finds_a_loop_through_a_function_level_import_and_a_string(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from pkg import b\n")
    (root / "b.py").write_text("COMMANDS = ['pkg.c']\nRUN = ['python', '-m', 'pkg']\n")
    (root / "c.py").write_text("from pkg.a import f\n")
    (root / "d.py").write_text("from . import c\n")
    graph = import_graph(package_modules(root))
    assert graph["pkg.d"] == {"pkg.c"}
    assert import_loops(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_package_has_no_import_loop():
    loops = import_loops(import_graph(package_modules()))
    assert loops == [], "import loops: " + "; ".join(" <-> ".join(loop) for loop in loops)


def test_no_module_is_longer_than_the_limit():
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in package_modules().items()}
    long = {name: lines for name, lines in long.items() if lines > MAX_LINES}
    assert long == {}, f"split these by concern (limit {MAX_LINES} lines): {long}"


@pytest.mark.parametrize(
    "spelling",
    [r"""["']dataset_info\.json["']""", r"""\.parent\.parent""", r"""["']lmdb["']""", r"""(imgs\.tsv|texts\.jsonl)["']""",
     r"""(split|default)\s*=\s*["']test["']""", r"""(/\s*|path\.join\([^)]*)["'](imgs|pairs)["']|["']imgs["'],\s*["']pairs["']"""],
)
def test_the_dataset_layout_is_spelled_in_one_module(spelling):
    pattern = re.compile(spelling)
    elsewhere = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for name, path in package_modules().items()
        if name != LAYOUT_MODULE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert elsewhere == [], f"ask {LAYOUT_MODULE} instead: {elsewhere}"
