"""The package layout of issue 15, checked: no import cycles (module-level or inside functions), every
module imports alone in a fresh interpreter, no library module over 450 lines, and the data sources
are reached only through their descriptors."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "titan_recipes"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (top level or inside a function), except
    under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # ``if TYPE_CHECKING:`` imports never run
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def ancestors(name: str) -> set[str]:
    """Importing a module imports its parent packages first; those edges are not cycles of its own."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
    graph = {name: imports_of(name, path) - ancestors(name) for name, path in MODULES.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt in ancestors(node) or node in ancestors(nxt):
                continue  # a package and its own submodules
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_library_module_is_oversized():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them along their seams): {big}"


IMPORT_EACH = """
import importlib, json, os, sys
import numpy, torch  # third-party only, to save each child ~1 s; nothing of titan_recipes or torchtitan
names, results, running = json.loads(sys.argv[1]), {}, {}

def reap():
    pid, _ = os.wait()
    name, read = running.pop(pid)
    with os.fdopen(read, "rb") as f:
        results[name] = f.read().decode()

for name in names:
    if len(running) >= 2:
        reap()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that has imported nothing of the package: the module alone
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException as e:
            message = f"{type(e).__name__}: {e}"
        os.write(write, message.encode()[:4000])
        os._exit(0)
    os.close(write)
    running[pid] = (name, read)
while running:
    reap()
print(json.dumps(results))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [n for n in MODULES if not n.endswith("__main__")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH, json.dumps(names)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = {name: error for name, error in json.loads(proc.stdout.strip().splitlines()[-1]).items() if error}
    assert not failed, failed


SOURCE_NAMES = ("mds", "blendcorpus", "mixture")


@pytest.mark.parametrize("module", ["titan_recipes.specs", "titan_recipes.tokenizer", "titan_recipes.domain_loss",
                                    "titan_recipes.trainer", "titan_recipes.config"])
def test_shared_modules_do_not_name_a_source(module):
    """specs, the tokenizer, the domain loss, the trainer and the config ask the descriptor; none imports
    a source's package or compares ``training.dataset`` with a source's name."""
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    imported = imports_of(module, path)
    assert not [m for m in imported if any(m.startswith(f"titan_recipes.data.{s}") for s in SOURCE_NAMES)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            assert not set(consts) & set(SOURCE_NAMES), f"{module}:{node.lineno} compares with a source name"
