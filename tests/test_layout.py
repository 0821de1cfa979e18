"""The layout keeps the architecture: imports point one way, no cycles, a light CLI start.

Layers, top to bottom: imgpipe (the application) -> pipeline (the DAG and its config)
-> components -> trainer -> serving. A module may import its own package or a lower
layer, never a higher one, and no two modules may import each other in a circle.
Function-level imports count too: a cycle hidden inside a function is still a cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("imgpipe", "pipeline", "components", "trainer", "serving")


def _modules() -> dict[str, str]:
    mods = {}
    for top in LAYERS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), ROOT)[:-3].replace(os.sep, ".")
                    mods[rel.removesuffix(".__init__")] = os.path.join(dirpath, name)
    return mods


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = resolve(name)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def test_imports_point_down_the_layers():
    rank = {top: i for i, top in enumerate(LAYERS)}
    upward = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if rank[dep.split(".")[0]] < rank[mod.split(".")[0]]
    ]
    assert upward == []


def test_nothing_imports_the_cli():
    entry_points = {"imgpipe.__main__"}  # `python -m imgpipe`, like the console script
    offenders = [
        mod
        for mod, deps in _graph().items()
        if not mod.startswith("imgpipe.cli")
        and mod not in entry_points
        and any(d.startswith("imgpipe.cli") for d in deps)
    ]
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_setup_py_installs_every_package():
    """A package missing from setup.py works in the editable dev install but not in the image."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    [listed] = [
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PACKAGES" for t in node.targets)
    ]
    packages = {m for m, path in _modules().items() if path.endswith("__init__.py")}
    assert packages == set(listed)


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_checks_see_what_they_look_for():
    """The cycle finder finds a circle, and the graph holds function-level imports."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "trainer.config" in graph["pipeline.config"]  # a module-level import
    assert "trainer.pretrain" in graph["imgpipe.demo.steps"]  # imported inside a function


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["ingest", "--help"]])
def test_cli_help_does_not_load_tensorflow(argv):
    code = (
        "import sys\n"
        "from imgpipe.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'tfx', 'tensorflow_transform', 'apache_beam') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_local_run_path_does_not_import_the_cloud_extensions():
    """`imgpipe run` needs neither `tfx.v1` nor google-cloud-aiplatform (a third of its imports)."""
    code = (
        "import sys\n"
        "import imgpipe.orchestration.local, pipeline.pipeline, trainer.task\n"
        "import components.evaluator, components.infra_validator, components.pusher\n"
        "print([m for m in ('tfx.v1', 'google.cloud.aiplatform', 'kfp') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
