"""The package's imports run one way: no import cycle, and no module imports a layer above its own.

Every module of ``recbole_denoise`` is parsed with ``ast`` (module-level and function-level imports alike:
a lazy import that closes a loop is still a loop, it only fails later). An edge goes to the module a
statement names: ``from recbole_denoise.denoisers import base`` is an edge to ``denoisers.base``,
``from recbole_denoise.denoisers import Denoiser`` one to the package ``denoisers`` (its ``__init__``, which
re-exports and so imports its own modules). The parent packages Python initialises before any submodule
are not edges: the root package is the user-facing facade (``run_recbole_denoise``, ``Denoiser``) and is
always initialised first, so ``from recbole_denoise import __version__`` (metadata, no module) is no edge.
"""
import ast
import os

import pytest

PACKAGE = "recbole_denoise"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
METADATA = {"__version__"}  # names of the root package that import no module

# Bottom to top; a module belongs to the layer of its longest matching entry (the root package: exactly).
# A module may import its own layer (the cycle test keeps those one-way) and every layer below it.
LAYERS = (
    ("foundation", ("errors", "log", "io", "memory", "resources", "compat", "distributed", "timings")),
    # pure metrics over arrays; benchmark.stats: the per-user ranks every run writes and the report reads
    ("metrics", ("evaluator", "benchmark.stats")),
    ("data", ("data",)),
    ("llm", ("llm",)),
    ("denoisers", ("denoisers",)),
    ("model", ("model",)),
    # the data stages before RecBole (prepare: data/ and denoisers/), the configuration (resolves models and
    # denoisers), the trainer
    ("stages", ("prepare", "config", "trainer")),
    # one run's steps, data stages -> RecBole -> analyses (and the checkpoint stamp inference reads)
    ("pipeline", ("pipeline",)),
    ("run", ("quick_start", "inference")),
    ("entry", ("", "benchmark")),  # "": the root package, the facade
    ("cli", ("cli",)),
)
# Cycles in files this test's author could not change; each entry names the edges to remove. The test
# fails when one disappears too, so the list never outlives the loop.
KNOWN_CYCLES = set()


def modules(root=ROOT):
    """``{dotted name: path}`` of every module and package of ``root``."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(root))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return out


def imports(name, path, known):
    """The package-internal modules ``name`` (at ``path``) imports, anywhere in the file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif not (base == PACKAGE and alias.name in METADATA):
                    out.add(base)
    return {m for m in out if m in known and m != name}


def graph(root=ROOT):
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g):
    """The strongly connected components of more than one module (Tarjan), each a frozenset."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return set(found)


def layer(module):
    """``(rank, layer name)`` of a module: its longest matching entry of :data:`LAYERS`."""
    rel = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best = None
    for rank, (name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = rel == p if p == "" else (rel == p or rel.startswith(p + "."))
            if hit and (best is None or len(p) > best[0]):
                best = (len(p), rank, name)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_import_graph.py")
    return best[1], best[2]


def violations(g):
    """Every import of a module from a higher layer, as ``'a (layer) -> b (layer)'``."""
    out = []
    for a, targets in sorted(g.items()):
        for b in sorted(targets):
            (ra, la), (rb, lb) = layer(a), layer(b)
            if rb > ra:
                out.append(f"{a} ({la}) -> {b} ({lb})")
    return out


def test_the_graph_sees_every_kind_of_import():
    g = graph()
    assert "recbole_denoise.denoisers.base" in g["recbole_denoise.denoisers.stage"]  # module level
    assert "recbole_denoise.benchmark.report" in g["recbole_denoise.benchmark.executor"]  # function level
    assert "recbole_denoise.denoisers" in g["recbole_denoise.config"]  # a package's re-exported name
    assert "recbole_denoise.io" in g["recbole_denoise.data.atomic"]


def test_no_import_cycles():
    found = cycles(graph())
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not new, f"import cycles: {new}"
    assert not gone, f"cycles fixed (remove them from KNOWN_CYCLES): {gone}"


def test_imports_respect_the_layers():
    assert violations(graph()) == []


def test_the_checks_fail_on_a_loop_and_an_upward_import(tmp_path):
    """The report <-> plots loop this test was written against, and an LLM module importing a denoiser."""
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "io.py": "",
        "benchmark/__init__.py": "",
        "benchmark/report.py": "from recbole_denoise.io import replace_atomically\n"
                               "def write_report():\n    from recbole_denoise.benchmark.plots import write_plots\n",
        "benchmark/plots.py": "def write_plots():\n    from recbole_denoise.benchmark.report import numeric\n",
        "denoisers/__init__.py": "from recbole_denoise.denoisers.base import Denoiser\n",
        "denoisers/base.py": "from recbole_denoise import io\n",
        "llm/__init__.py": "",
        "llm/finetune.py": "from recbole_denoise.denoisers import base\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = graph(str(pkg))
    assert cycles(g) == {frozenset({"recbole_denoise.benchmark.report", "recbole_denoise.benchmark.plots"})}
    assert violations(g) == ["recbole_denoise.llm.finetune (llm) -> recbole_denoise.denoisers.base (denoisers)"]
    with pytest.raises(AssertionError, match="in no layer"):
        layer("recbole_denoise.somewhere_new")
