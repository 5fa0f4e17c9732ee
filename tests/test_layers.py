"""The import graph keeps the layers one-way (README, "Layers") and has no cycle.

Every module of extract/, indexes/, retrieval/ and cli.py is parsed with ``ast``; imports inside
functions count as much as those at the top. The rules:

- ``extract.core`` imports nothing of buscador's own;
- ``extract`` imports only ``extract`` (never the text side or the indexes);
- ``indexes`` imports only the core, the feature store (``extract.store``, ``extract.fingerprints``,
  ``extract.compat``) and itself;
- library code never imports the command layer (``cli``, ``retrieval.commands``);
- production modules never import a benchmark (``*.bench``) or the demo corpus (``retrieval.demo``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("extract", "indexes", "retrieval")
OURS = (*PACKAGES, "cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a name inside one) refers to, or None if not ours."""
    if name.split(".")[0] not in OURS:
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere in its body (functions included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _allowed(src: str, dst: str) -> str | None:
    """None when ``src`` may import ``dst``; otherwise the rule it breaks."""
    is_command = lambda m: m == "cli" or _under(m, "retrieval.commands")
    if _under(src, "extract.core"):
        return None if _under(dst, "extract.core") else "the core imports nothing of ours"
    if is_command(dst) and not is_command(src):
        return "library code never imports the command layer"
    is_bench = lambda m: "bench" in m.split(".")
    if is_bench(dst) and not (is_bench(src) or is_command(src)):
        return "production modules never import a benchmark"
    if _under(dst, "retrieval.demo") and not (_under(src, "retrieval.demo") or is_command(src)):
        return "nothing but the demo-data command imports the demo corpus"
    if _under(src, "extract"):
        return None if _under(dst, "extract") else "extract imports only extract"
    if _under(src, "indexes"):
        ok = _under(dst, "indexes") or _under(dst, "extract.core") or dst in ("extract.store", "extract.fingerprints", "extract.compat")
        return None if ok else "indexes imports only the core and the feature store"
    return None


def test_the_graph_sees_imports_inside_functions():
    # reference: retrieval.search imports the image extractor inside a method, and the core at the top
    assert "extract.features" in GRAPH["retrieval.search"]
    assert "extract.core.errors" in GRAPH["retrieval.search"]
    assert "retrieval.commands.common" in GRAPH["cli"]


@pytest.mark.parametrize("src", sorted(GRAPH))
def test_no_forbidden_arrow(src):
    bad = [(dst, why) for dst in sorted(GRAPH[src]) if (why := _allowed(src, dst))]
    assert not bad, f"{src} imports " + "; ".join(f"{d} ({w})" for d, w in bad)


def test_rules_reject_the_arrows_they_name():
    assert _allowed("extract.features", "retrieval.text")
    assert _allowed("extract.core.files", "extract.store")
    assert _allowed("indexes.search", "retrieval.query")
    assert _allowed("indexes.build", "extract.features")
    assert _allowed("retrieval.train", "cli")
    assert _allowed("retrieval.search", "retrieval.bench.search")
    assert _allowed("retrieval.train", "retrieval.demo.corpus")
    assert _allowed("indexes.build", "extract.store") is None
    assert _allowed("retrieval.commands.search", "retrieval.bench.search") is None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(GRAPH) == []
