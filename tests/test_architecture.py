"""The layout holds: imports run one way, no import circles, command modules import only the library.

Every module's imports are read with ``ast`` (module level and inside functions alike), so the test
needs no import of the package and names both modules of any import that breaks a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A unit (``mixq.<name>``, a package or a top-level module) may import its own modules and
# units of lower layers only; units of one layer do not import each other.
LAYERS: list[set[str]] = [
    {"mixq.errors", "mixq.provenance", "mixq.timing", "mixq.progress", "mixq._face"},
    {"mixq.fileio", "mixq.executor", "mixq.pareto", "mixq.knapsack"},  # pools; atomic writes, locks; fronts; ILP
    {"mixq.paths", "mixq.bits"},
    {"mixq.quant"},
    {"mixq.models", "mixq.data"},
    {"mixq.evaluation"},
    {"mixq.evoq", "mixq.bench", "mixq.proxies"},
    {"mixq.emq"},
    {"mixq.allocate"},
    {"mixq.reports", "mixq.export"},
    {"mixq.cli"},
]
FACE = "mixq"  # mixq/__init__.py: the public face, above everything; nothing inside imports it
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted((SRC / "mixq").rglob("*.py"))}


def _resolve(name: str) -> str:
    """The module a dotted import name refers to (a name inside a module resolves to that module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> list[tuple[str, int, list[str]]]:
    """``(imported module, line, imported names)`` for every mixq import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mixq":
                    found.append((_resolve(alias.name), node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mixq":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from mixq.pkg import submodule`
                    found.append((sub, node.lineno, []))
                else:
                    found.append((_resolve(target), node.lineno, [alias.name]))
    return found


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES if m != FACE}
    missing = sorted(u for u in units if u not in RANK)
    assert not missing, f"units without a layer in LAYERS: {missing}"


def test_imports_run_one_way():
    bad = []
    for module in MODULES:
        for target, line, _ in _imports(module):
            if module == FACE:
                continue
            if target == FACE:
                bad.append(f"{module}:{line} imports the public face {FACE!r}; import the defining module")
                continue
            src, dst = _unit(module), _unit(target)
            if src == dst:
                continue
            if RANK[dst] >= RANK[src]:
                how = "a unit of the same layer" if RANK[dst] == RANK[src] else "a higher layer"
                bad.append(f"{module}:{line} imports {target} ({how}: {src} is layer {RANK[src]}, {dst} is "
                           f"layer {RANK[dst]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_circles():
    graph = {m: sorted({t for t, _, _ in _imports(m) if t != m}) for m in MODULES}
    # a package's __init__ re-exporting its modules is not a circle when the modules never import it back
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_command_modules_import_the_library_not_each_other():
    bad = []
    for module in MODULES:
        if _unit(module) != "mixq.cli":
            continue
        for target, line, _ in _imports(module):
            if _unit(target) != "mixq.cli" or target == module:
                continue
            if module in ("mixq.cli", "mixq.cli.__main__", "mixq.cli.app") and (
                    module == "mixq.cli.app" or target == "mixq.cli.app"):
                continue  # the parser gathers every command module; the package and `python -m` run it
            if target != "mixq.cli.common":
                bad.append(f"{module}:{line} imports the command module {target}")
            if module == "mixq.cli.common":
                bad.append(f"{module}:{line} (the shared helpers) imports {target}")
    assert not bad, "\n".join(bad)


def test_private_names_stay_in_their_package():
    bad = []
    for module in MODULES:
        for target, line, names in _imports(module):
            if _unit(target) == _unit(module) or module == FACE and target == "mixq._face":
                continue
            if target.rsplit(".", 1)[-1].startswith("_") and target != "mixq._face":
                bad.append(f"{module}:{line} imports the private module {target}")
            bad += [f"{module}:{line} imports the private name {target}.{n}" for n in names
                    if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("unit", sorted({_unit(m) for m in MODULES if m != FACE}))
def test_each_package_says_what_it_holds(unit):
    path = MODULES[unit]
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 4, f"{path} needs an opening docstring saying what it holds"


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    """The rules can fail: an upward import and a circle planted in copies of two modules are reported."""
    fake = {"mixq.quant.x": tmp_path / "x.py", "mixq.cli.y": tmp_path / "y.py", "mixq.cli.z": tmp_path / "z.py"}
    fake["mixq.quant.x"].write_text("from mixq.emq.run import emq_search\nfrom mixq.quant.y2 import a\n")
    fake["mixq.cli.y"].write_text("from mixq.cli.z import f\n")
    fake["mixq.cli.z"].write_text('"""z."""\nfrom mixq.cli.y import g\n')
    monkeypatch.setattr(f"{__name__}.MODULES", {**MODULES, **fake})
    with pytest.raises(AssertionError, match=r"mixq\.quant\.x:1 imports mixq\.emq\.run \(a higher layer"):
        test_imports_run_one_way()
    with pytest.raises(AssertionError, match=r"mixq\.cli\.y -> mixq\.cli\.z -> mixq\.cli\.y"):
        test_no_import_circles()
    with pytest.raises(AssertionError, match=r"mixq\.cli\.y:1 imports the command module mixq\.cli\.z"):
        test_command_modules_import_the_library_not_each_other()


def test_no_package_attribute_shadows_a_module():
    """``import mixq.pkg.mod as m`` must give the module, not a function re-exported under its name."""
    import importlib

    bad = []
    for module in MODULES:
        if "." not in module or module.endswith(".__main__"):  # importing __main__ would run the command
            continue
        parent, name = module.rsplit(".", 1)
        mod = importlib.import_module(module)
        if getattr(importlib.import_module(parent), name) is not mod:
            bad.append(f"{parent}.{name} is {getattr(importlib.import_module(parent), name)!r}, not the module")
    assert not bad, "\n".join(bad)
