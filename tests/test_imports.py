"""The import rules of src/kandi, over every import (those inside functions too): no cycle anywhere;
the engine imports no shell; the server and the batch runner never import the CLI or each other; the
models and schedulers import no pipeline or shell."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"
SHELLS = ("kandi.cli", "kandi.server", "kandi.batch")


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "kandi").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kandi modules `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read():
    g = graph()
    assert "kandi.engine.plan" in g["kandi.cli.common"] and "kandi.engine" in g["kandi.server.schemas"]


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_the_engine_imports_no_shell():
    bad = [(m, t) for m, ts in graph().items() if within(m, "kandi.engine") for t in ts
           if any(within(t, s) for s in SHELLS)]  # fmt: skip
    assert bad == []


def test_server_and_batch_never_import_the_cli_or_each_other():
    rules = {"kandi.server": ("kandi.cli", "kandi.batch"), "kandi.batch": ("kandi.cli", "kandi.server")}
    bad = [(m, t) for m, ts in graph().items() for pkg, banned in rules.items() if within(m, pkg)
           for t in ts if any(within(t, b) for b in banned)]  # fmt: skip
    assert bad == []


def test_models_and_schedulers_stand_alone():
    low = ("kandi.models", "kandi.schedulers")
    high = ("kandi.pipelines", "kandi.compat", "kandi.engine", *SHELLS)
    bad = [(m, t) for m, ts in graph().items() if any(within(m, p) for p in low) for t in ts
           if any(within(t, h) for h in high)]  # fmt: skip
    assert bad == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
