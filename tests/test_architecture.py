"""The package's layers (docs/architecture.md): imports run one way, from the application down to the
core, and no module imports itself back through others. Every import counts, also those inside
functions and under `TYPE_CHECKING`, since each is a dependency someone must understand."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Highest first. A layer may import the layers below it; the packages of one layer are independent
# of each other (P1, P2 and P3 share training, the models and metrics, never one another).
LAYERS = (("app",), ("pretraining",), ("zeroshot", "captioning", "attention"), ("training",), ("metrics",), ("models",),
          ("demo",), ("core",))


def imports_of(path: Path, module: str) -> set[str]:
    """Every hw3lib module `path` (the module `module`) imports, as absolute dotted names."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hw3lib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "hw3lib":
                continue
            # `from pkg import mod` names a module; `from mod import name` names the module
            found |= {f"{base}.{a.name}" if (ROOT / (base + "." + a.name).replace(".", "/")).with_suffix(".py").exists()
                      else base for a in node.names}
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph = {}
    for path in sorted((root / "hw3lib").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = imports_of(path, module)
    return graph


def layer_of(module: str, layers=LAYERS) -> tuple[int, str] | None:
    """(layer index, package) of a module; None for the package root (`hw3lib/__init__.py`,
    `__main__.py`), which only re-exports."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    for i, layer in enumerate(layers):
        if parts[1] in layer:
            return i, parts[1]
    raise AssertionError(f"{module}: in no layer (add its package to LAYERS and docs/architecture.md)")


def violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    out = []
    for module, deps in graph.items():
        here = layer_of(module, layers)
        if here is None:
            continue
        for dep in deps:
            there = layer_of(dep, layers)
            if there is None:
                out.append(f"{module} imports the package root")
            elif there[0] < here[0] or (there[0] == here[0] and there[1] != here[1]):
                out.append(f"{module} ({here[1]}) imports {dep} ({there[1]})")
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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


def test_the_checks_find_what_they_look_for():
    """Hand-made graphs: an upward import, a sibling import and a cycle are each found."""
    g = {"hw3lib.core.files": {"hw3lib.models.gpt2"}, "hw3lib.models.gpt2": {"hw3lib.core.files"},
         "hw3lib.zeroshot.classify": {"hw3lib.attention.maps"}, "hw3lib.attention.maps": set()}
    assert violations(g) == ["hw3lib.core.files (core) imports hw3lib.models.gpt2 (models)",
                             "hw3lib.zeroshot.classify (zeroshot) imports hw3lib.attention.maps (attention)"]
    assert cycles(g) == [["hw3lib.core.files", "hw3lib.models.gpt2"]]
    assert violations({"hw3lib.app.cli": {"hw3lib.core.files"}, "hw3lib.core.files": set()}) == []


def test_imports_run_down_the_layers():
    graph = import_graph()
    assert len(graph) > 30 and sum(map(len, graph.values())) > 100  # the parser found the imports
    assert violations(graph) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_module_is_documented():
    """docs/architecture.md's table lists every module of the package, and none that is gone."""
    import re
    import sys

    doc = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(\w+/\w+)\.py` \|", doc, re.M))
    modules = {str(p.relative_to(ROOT / "hw3lib").with_suffix("")) for p in (ROOT / "hw3lib").glob("*/*.py")}
    modules -= {m for m in modules if m.endswith("__init__")}
    assert listed == modules, f"missing from the doc: {sorted(modules - listed)}; gone: {sorted(listed - modules)}"
    assert {m.split("/")[0] for m in modules} == {p for layer in LAYERS for p in layer}
    assert not {m.split("/")[1] for m in modules} & set(sys.stdlib_module_names) - {"cli"}


# -- one reader of the caption grammar ------------------------------------------------------------------

MENTION_READER = ("hw3lib/demo/phrasing.py", {"mention_positions", "phrases"})  # the one place mentions are read


def mention_readers(source: str, name: str = "<module>") -> list[str]:
    """Functions that read mentions themselves: they look at a word's neighbour (`w[i - 1]`, `w[i + 2]`)
    and test words against the shape or colour vocabulary (`... in shapes`, `in color_set`)."""
    out = []
    for fn in ast.walk(ast.parse(source, name)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        neighbour = any(isinstance(n, ast.Subscript) and isinstance(n.slice, ast.BinOp)
                        and isinstance(n.slice.op, ast.Add | ast.Sub) and isinstance(n.slice.right, ast.Constant)
                        for n in ast.walk(fn))
        vocabulary = any(isinstance(n, ast.Compare) and any(isinstance(op, ast.In) for op in n.ops)
                         and any("shape" in ast.unparse(c) or "colo" in ast.unparse(c) for c in n.comparators)
                         for n in ast.walk(fn))
        if neighbour and vocabulary:
            out.append(fn.name)
    return out


def test_the_check_finds_a_second_mention_reader():
    hand_made = '''
def colour_of(words, i, colors):
    return words[i - 1] if i > 0 and words[i - 1] in colors else None

def count_shapes(words, shapes):
    return sum(w in shapes for w in words)  # counting words is not reading mentions
'''
    assert mention_readers(hand_made) == ["colour_of"]


def found_outside(check, home: str, allowed=None) -> dict[str, list[str]]:
    """What `check(source, name)` finds in every module of the package, less what `home` (the one module
    where the idea lives) may hold: the `allowed` names, or everything when None."""
    found = {}
    for path in sorted((ROOT / "hw3lib").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        names = set(check(path.read_text(), rel))
        if rel == home:
            names -= names if allowed is None else set(allowed)
        if names:
            found[rel] = sorted(names)
    return found


def test_mentions_are_read_in_one_place():
    found = found_outside(mention_readers, *MENTION_READER)
    assert not found, f"mentions read outside {MENTION_READER[0]} (call demo.phrasing.mention_positions): {found}"


def grammar_literals(source: str, name: str = "<module>") -> list[str]:
    """String constants of a module that spell a piece of the caption grammar: a relation's words, the
    "coloured" form (each must come from `demo.phrasing`)."""
    from hw3lib.demo import phrasing

    pieces = set(phrasing.RELATION_WORDS.values()) | set(phrasing.COLOURED)
    pieces -= {"above", "below"}  # plain words that also mean other things (figure placement)
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                any(p in node.value for p in pieces) and len(node.value) < 80 and "\n" not in node.value:
            found.append(node.value)
    return found


def test_the_check_finds_a_second_grammar_writer():
    hand_made = '''
def caption(a, b):
    return f"{a} to the left of {b}"  # an f-string keeps its text in Constant parts

TEMPLATE = "{shape} coloured {colour}"
NOTE = "a caption names each object once"
'''
    assert sorted(grammar_literals(hand_made)) == [" to the left of ", "{shape} coloured {colour}"]


def test_the_grammar_is_written_in_one_place():
    """No module other than demo/phrasing.py spells a relation or "coloured" in a short string (a docstring
    explaining the grammar is longer and is allowed)."""
    found = found_outside(grammar_literals, "hw3lib/demo/phrasing.py")
    assert not found, f"caption grammar written outside hw3lib/demo/phrasing.py: {found}"


# -- one pointing game ------------------------------------------------------------------------------------

POINTING = ("hw3lib/core/patches.py", {"points_at"})  # the one place a map's peak is checked against an object


def pointing_functions(source: str, name: str = "<module>") -> list[str]:
    """Functions that play the pointing game themselves: they take a peak (`argmax`, `unravel_index`) and
    look at boxes or masks (a name with "box", "cover", "where" or "mask" in it) in the same body."""
    out = []
    for fn in ast.walk(ast.parse(source, name)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {a.arg for a in ast.walk(fn)
                                                                           if isinstance(a, ast.arg)}
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(fn) if isinstance(n, ast.Call)}
        if calls & {"argmax", "unravel_index"} and any(k in n for n in names for k in ("box", "cover", "where", "mask")):
            out.append(fn.name)
    return out


def test_the_check_finds_a_second_pointing_function():
    hand_made = '''
def hit(heat, boxes):
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)

def best_class(logits):
    return logits.argmax(-1)  # a peak, but no object
'''
    assert pointing_functions(hand_made) == ["hit"]


def test_pointing_is_played_in_one_place():
    found = found_outside(pointing_functions, *POINTING)
    assert not found, f"the pointing game played outside {POINTING[0]} (call patches.points_at): {found}"


# -- sizes -------------------------------------------------------------------------------------------------

MAX_LINES, MAX_PARAMS = 60, 8
def oversized(source: str, name: str = "<module>") -> list[str]:
    """Functions over MAX_LINES lines or MAX_PARAMS parameters (self and cls not counted)."""
    out = []
    for fn in ast.walk(ast.parse(source, name)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            a = fn.args
            params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - (a.args[:1] != [] and a.args[0].arg in ("self", "cls"))
            if fn.end_lineno - fn.lineno + 1 > MAX_LINES or params > MAX_PARAMS:
                out.append(fn.name)
    return out


def test_the_size_check_counts_lines_and_parameters():
    long = "def long():\n" + "    x = 1\n" * MAX_LINES
    wide = "class C:\n    def wide(self, a, b, c, d, e, f, g, h, *, i=1):\n        pass\n"
    assert oversized(long) == ["long"] and oversized(wide) == ["wide"]
    assert oversized("def fine(a, b, c, d, e, f, g, h):\n    pass\n") == []


def test_no_function_past_the_limits():
    """Functions stay short and take records, not long argument lists (nanoGPT's size)."""
    found = {f"{path.relative_to(ROOT / 'hw3lib').as_posix()}:{n}" for path in sorted((ROOT / "hw3lib").rglob("*.py"))
             for n in oversized(path.read_text(), str(path))}
    assert not found, f"over {MAX_LINES} lines or {MAX_PARAMS} parameters: {sorted(found)}"


# -- what each package offers ------------------------------------------------------------------------------

PACKAGES = sorted(p for layer in LAYERS for p in layer)


def test_every_package_says_what_it_offers():
    """Each subpackage's `__init__` lists its public names (`__all__`), each one resolves, and importing the
    package imports none of its modules (they load on first use)."""
    import importlib
    import subprocess
    import sys

    for pkg in PACKAGES:
        mod = importlib.import_module(f"hw3lib.{pkg}")
        assert mod.__all__ and mod.__all__ == sorted(mod.__all__), pkg
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"hw3lib.{pkg}.{name}"
    code = ("import sys, hw3lib.core, hw3lib.models, hw3lib.app; "
            "print(sorted(m for m in sys.modules if m.count('.') == 2 and m.startswith('hw3lib.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['hw3lib.core.lazy']", loaded


def test_notebooks_import_packages_and_no_plumbing():
    """The notebooks import what the packages offer (`from hw3lib.PKG import ...`, names in its `__all__`),
    never a module inside a package, and no file-writing plumbing (records and figures save themselves)."""
    import importlib

    for nb in sorted((ROOT / "notebooks").glob("*.py")):
        for node in ast.walk(ast.parse(nb.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hw3lib"):
                parts = node.module.split(".")
                assert len(parts) == 2, f"{nb.name}: imports the module {node.module} (import from hw3lib.{parts[1]})"
                offered = importlib.import_module(node.module).__all__
                names = [a.name for a in node.names]
                assert set(names) <= set(offered), f"{nb.name}: {sorted(set(names) - set(offered))} not in {node.module}"
                assert not any(n.startswith("atomic_") for n in names), f"{nb.name}: {names}"
