"""The package is a stack: every import runs down it, never up, never sideways between two packages of one layer,
and no group of modules imports itself round in a cycle. Read from the source (ast), nothing is executed, so
imports inside functions count too. docs/architecture.md draws the same stack."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "navee_jax")

# Low to high. A unit is a top-level module (core) or a subpackage; the package's own __init__ (the public
# face, `from navee_jax import Recognizer`) stands above everything.
LAYERS = (
    ("core", ("errors", "cli", "backend", "sharding", "checkpoints", "distances", "embed", "fingerprint",
              "recorded_config", "train_state", "method", "workdir_lock")),
    ("data, models, losses", ("data", "models", "losses")),
    ("evaluate", ("evaluate",)),
    ("methods", ("train", "meta")),
    ("methods on the metric-learning step", ("classify", "toptune")),
    ("recognize", ("recognize",)),
    ("entry points", ("launcher",)),
)


def _modules(package_dir: str) -> dict[str, str]:
    """{dotted module name: file} of every .py file under `package_dir`."""
    root = os.path.basename(package_dir)
    found = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(package_dir))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(folder, name)
    assert found, f"no modules under {package_dir}"
    assert root in found, f"{package_dir} has no __init__.py"
    return found


def _imports(path: str, modules: dict[str, str]) -> list[tuple[int, str]]:
    """(line, imported module of the package) for every import statement in the file, resolved to modules."""
    root = next(name for name in modules if "." not in name)
    out = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module pkg.mod when there is one, else a name of pkg
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n == root or n.startswith(root + ".")]
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def import_problems(package_dir: str, layers=LAYERS) -> list[str]:
    """Every import that runs up the stack or sideways within a layer, every module outside the table, and
    every import cycle, one line each."""
    modules = _modules(package_dir)
    root = next(name for name in modules if "." not in name)
    layer_of = {f"{root}.{unit}": i for i, (_, units) in enumerate(layers) for unit in units}
    problems = [f"{m} ({modules[m]}) belongs to no layer: add it to LAYERS in tests/test_layers.py"
                for m in sorted(modules) if m != root and _unit(m) not in layer_of]
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in sorted(modules.items()):
        for line, target in _imports(path, modules):
            graph[module].add(target)
            if module == root or _unit(module) not in layer_of:
                continue
            where = f"{os.path.relpath(path, os.path.dirname(package_dir))}:{line}: {module} imports {target}"
            if target == root:
                problems.append(f"{where}, the package's public face (import the module that defines the name)")
                continue
            src, dst = _unit(module), _unit(target)
            a, b = layer_of[src], layer_of.get(dst)
            if b is None or src == dst:
                continue
            if b > a:
                problems.append(f"{where}: up the stack, from {layers[a][0]} to {layers[b][0]}")
            elif b == a and a != 0:
                problems.append(f"{where}: sideways, two packages of the layer '{layers[a][0]}'")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                out.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_imports_only_down_the_stack():
    problems = import_problems(PACKAGE)
    assert not problems, "\n".join(problems)


def _write(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root / "pkg")


SMALL = (("core", ("errors",)), ("low", ("data", "models")), ("high", ("launcher",)))


@pytest.mark.parametrize("files,expected", [
    ({"pkg/data/io.py": "from pkg.launcher import run\n"}, "pkg/data/io.py:1: pkg.data.io imports pkg.launcher: up"),
    ({"pkg/data/io.py": "def f():\n    import pkg.models.net\n"}, "pkg.data.io imports pkg.models.net: sideways"),
    ({"pkg/data/io.py": "from pkg import launcher\n"}, "pkg.data.io imports pkg.launcher: up the stack"),
    ({"pkg/extra.py": ""}, "pkg.extra"),
    ({"pkg/data/a.py": "import pkg.data.b\n", "pkg/data/b.py": "from pkg.data import a\n"},
     "import cycle: pkg.data.a -> pkg.data.b -> pkg.data.a"),
])
def test_the_checker_names_each_kind_of_bad_import(tmp_path, files, expected):
    base = {"pkg/__init__.py": "from pkg.launcher import run\n", "pkg/errors.py": "",
            "pkg/data/__init__.py": "from pkg.errors import *\n", "pkg/models/__init__.py": "",
            "pkg/launcher/__init__.py": "import pkg.data\nimport pkg.errors\nrun = 1\n"}
    package = _write(tmp_path, base)
    assert import_problems(package, SMALL) == []  # downward imports and the public face are fine
    _write(tmp_path, files)
    problems = import_problems(package, SMALL)
    assert any(expected in p for p in problems), problems
