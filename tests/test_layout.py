"""The package layout as tests: the layers, no import cycle, and the boundaries users rely on (`import
diffvqa_cache` loads no torch; stage two and scoring never load diffusers or transformers).

The checks read whatever modules exist under `diffvqa_cache/`, so a new module or package is covered the day
it is added (a new top-level one must be given a layer in `LAYERS` first).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import diffvqa_cache

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "diffvqa_cache"

# The layers, lowest first: a module imports only from its own layer or lower ones. Names are the top-level
# modules and packages of diffvqa_cache/. pipelines/ and cli.py sit above all of them (outside the package).
LAYERS = {
    0: ("config", "errors", "files", "seeds", "devices", "openmp", "progress", "clip_writer"),  # shared
    1: ("datasets", "cluster"),
    2: ("cache",),  # between the stages: the feature cache
    3: ("extraction", "training"),  # stage one, stage two
    4: ("run",),  # what stage two writes: the run folder (its record holds training's settings)
    5: ("scoring",),  # a fitted run in use
    6: ("doctor", "synthetic", "cli_options"),  # tools on top
}
APART = [("extraction", "training")]  # same layer, but they never import each other
RANK = {name: rank for rank, names in LAYERS.items() for name in names}

# Import cycles tolerated while a change that removes them is open (none: the tree has no cycle).
KNOWN_CYCLES: list[set[str]] = []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(module of diffvqa_cache imported, line) for every import in the file, module- and function-level."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level - 1` packages up
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                if base == "diffvqa_cache" and alias.name in diffvqa_cache._LAZY:  # the root's lazy API
                    sub = f"diffvqa_cache.{diffvqa_cache._LAZY[alias.name]}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return [(m, line) for m, line in found if m == "diffvqa_cache" or m.startswith("diffvqa_cache.")]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _ in _imports(name, path):
            while target not in MODULES:  # `import diffvqa_cache.a.b.NAME` -> the module that exists
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _part(module: str) -> str:
    """The top-level module or package of diffvqa_cache that `module` belongs to ("" for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.py").write_text(text)
    return tmp_path / "m.py"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_import_diffvqa_cache_loads_no_torch():
    out = _run("import sys, diffvqa_cache; print(sorted(m for m in sys.modules if m.split('.')[0] in "
               "('torch', 'diffusers', 'transformers', 'h5py')))")
    assert out == "[]", f"`import diffvqa_cache` loaded {out}; keep the package root's imports lazy"


def test_stage_two_scoring_and_cache_never_load_diffusers_or_transformers():
    names = sorted(m for m in MODULES if _part(m) in ("training", "scoring", "cache"))
    assert len(names) > 20, names  # the packages were found
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers'})\n"
        "    if heavy:\n"
        "        print(name, 'imports', ', '.join(heavy))\n"
        "        break\n"
    )
    out = _run(code)
    assert out == "", f"{out}: stage two, scoring and the cache import the SD stack only inside functions"


def test_the_import_graph_is_read(tmp_path):
    """The checks below see the imports they check: a guard against a parser that finds nothing."""
    graph = _graph()
    assert "diffvqa_cache.cache.folder" in graph["diffvqa_cache.training.data"]
    assert "diffvqa_cache.errors" in graph["diffvqa_cache.cache.folder"]
    assert "diffvqa_cache.extraction.backbone" in graph["diffvqa_cache.extraction.per_video"]  # inside a function
    text = "from .settings import X\nfrom ..errors import E\ndef f():\n    import diffvqa_cache.cache.pooling\n"
    assert _imports("diffvqa_cache.cache.folder", _write(tmp_path, text)) == [
        ("diffvqa_cache.cache.settings", 1), ("diffvqa_cache.errors", 2), ("diffvqa_cache.cache.pooling", 4)]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle():
    cycles = [c for c in _cycles(_graph()) if c not in KNOWN_CYCLES]
    assert not cycles, "import cycles (module- or function-level imports): " + "; ".join(
        " <-> ".join(sorted(c)) for c in cycles)


def test_every_top_level_module_has_a_layer():
    missing = sorted({_part(m) for m in MODULES} - set(RANK) - {""})
    assert not missing, (f"diffvqa_cache/{', '.join(missing)} has no layer: add it to LAYERS in "
                         f"tests/test_layout.py (and to the map in docs/architecture.md)")


def _layer_problems(name: str, imports: list[tuple[str, int]]) -> list[str]:
    """What is wrong with the imports (module, line) of module `name` under LAYERS."""
    part = _part(name)
    if part == "":  # the package root: the public API, each name loaded lazily from its layer
        return []
    if part not in RANK:
        return [f"diffvqa_cache/{part} has no layer: add it to LAYERS in tests/test_layout.py"]
    wrong = []
    for target, line in imports:
        other = _part(target)
        if other == part:
            continue
        if other == "":  # the root itself holds only __version__ (its lazy names count as their modules)
            continue
        if other not in RANK:
            wrong.append(f"line {line}: {target} has no layer: add {other} to LAYERS in tests/test_layout.py")
        elif RANK[other] > RANK[part]:
            wrong.append(f"line {line}: {part} (layer {RANK[part]}) imports {target} (layer {RANK[other]}, "
                         f"higher); move the code it needs down, or this module up")
        elif any({part, other} == set(pair) for pair in APART):
            wrong.append(f"line {line}: {part} imports {target}; {part} and {other} never import each other "
                         f"(what both need belongs in a lower layer)")
    return wrong


def test_the_layer_rule_catches_what_it_should(tmp_path):
    assert _layer_problems("diffvqa_cache.datasets.sample", [("diffvqa_cache.extraction.video", 17)]) == [
        "line 17: datasets (layer 1) imports diffvqa_cache.extraction.video (layer 3, higher); move the code "
        "it needs down, or this module up"]
    assert "never import each other" in _layer_problems("diffvqa_cache.training.loop",
                                                        [("diffvqa_cache.extraction.views", 3)])[0]
    assert "add newpkg to LAYERS" in _layer_problems("diffvqa_cache.cache.folder",
                                                     [("diffvqa_cache.newpkg.x", 5)])[0]
    assert "add it to LAYERS" in _layer_problems("diffvqa_cache.newpkg.x", [])[0]
    assert "layer 5, higher" in _layer_problems("diffvqa_cache.cache.folder", _imports(
        "diffvqa_cache.cache.folder", _write(tmp_path, "from diffvqa_cache import Scorer, __version__\n")))[0]
    assert _layer_problems("diffvqa_cache.scoring.scorer", [("diffvqa_cache.extraction.backbone", 9),
                                                           ("diffvqa_cache.scoring.familiarity", 10)]) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    wrong = _layer_problems(name, _imports(name, MODULES[name]))
    assert not wrong, f"{MODULES[name].relative_to(ROOT)}:\n" + "\n".join(wrong)
