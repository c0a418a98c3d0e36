"""The package's imports go one way (docs: ARCHITECTURE.md, "Layering, one way").

Every ``import``/``from ... import`` of a ``video_swin`` module is read with ``ast``, at module level and
inside functions alike (a function-level import is a dependency too: it only runs later). The tests fail on:

* an import from a lower layer to a higher one (``LAYERS`` below, lowest first; a module may import its
  own layer and the layers under it), ``if TYPE_CHECKING:`` imports included;
* a cycle between modules, or between the package's parts (``models``, ``checkpoints``, ``hub``, ...);
  an ``if TYPE_CHECKING:`` import never runs and may close a cycle within a layer (a module naming its
  caller's type in an annotation, as engine/plots.py does with engine/evaluate.py's ``VideoScores``);
* a module that no layer names (a new one is placed in ``LAYERS`` on purpose);
* ``models`` importing anything but the standard library, torch, einops and its own files.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "video_swin"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A part is a subpackage or a top-level module of video_swin; "video_swin" is the package's
# own __init__ (the public facade: video_swin.create_model etc., resolved on first use).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_version", "outputs"),  # exceptions, version, output-destination checks: torch-free, no layer above
    ("models",),  # the Swin core and presets: torch, einops and its own files
    ("checkpoints",),  # state dicts in and out (our format, official/timm/torchvision layouts, inflation)
    ("pretrained", "hub"),  # published weights by name (catalog, download); Hugging Face Hub folders
    ("factory",),  # create_model(name, pretrained=...), load_model, from_pretrained, the Hub methods
    ("config",),  # the typed config: checks model and weight names against models and pretrained (on use)
    ("data", "engine", "export"),  # datasets and decoders; training, evaluation, prediction; export
    ("cli", PACKAGE),  # the command, and the package facade
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}

# What models may import from outside the package besides the standard library.
MODELS_THIRD_PARTY = {"torch", "einops", "fvcore"}  # fvcore: FLOP counting only, imported on use (optional)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def imports(module: str, *, type_checking: bool = True) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a package module anywhere in ``module``'s file.

    ``from X import name`` imports ``X.name`` when that is a module, else ``X``. ``type_checking=False``
    leaves out the imports under ``if TYPE_CHECKING:`` (annotations only, never run).
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skipped.update(id(n) for statement in node.body for n in ast.walk(statement))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                out.append((target if target in MODULES else source, node.lineno))
    return out


def part(module: str) -> str:
    """The layer unit a module belongs to: its subpackage or top-level module, or the facade."""
    names = module.split(".")
    return names[1] if len(names) > 1 else PACKAGE


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT.parent)}:{line}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_walker_sees_module_and_function_level_imports():
    assert {"video_swin", "video_swin.models", "video_swin.models.swin", "video_swin.cli"} <= MODULES.keys()
    assert "video_swin.models.windows" in {t for t, _ in imports("video_swin.models.swin")}  # module level
    assert "video_swin.engine" in {t for t, _ in imports("video_swin.cli")}  # inside a function


def test_every_part_of_the_package_has_a_layer():
    unplaced = sorted({part(m) for m in MODULES} - RANK.keys())
    assert not unplaced, f"{unplaced}: not in any layer of tests/test_layers.py's LAYERS; place them there"


def test_no_import_goes_up_a_layer():
    upward = []
    for module in MODULES:
        for target, line in imports(module):
            source_part, target_part = part(module), part(target)
            if RANK.get(target_part, -1) > RANK.get(source_part, len(LAYERS)):
                upward.append(f"{where(module, line)} imports {target} "
                              f"({target_part} is above {source_part})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _ in imports(m, type_checking=False) if t != m} for m in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {part(t) for t, _ in imports(module, type_checking=False)}
        graph.setdefault(part(module), set()).update(targets - {part(module)})
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between parts of the package: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) == "models"))
def test_models_import_only_torch_einops_and_their_own_files(module):
    foreign = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [(node.module or "", node.lineno)]
        else:
            continue
        for name, line in names:
            top = name.split(".")[0]
            if top == PACKAGE:
                ok = part(name) == "models"
            else:
                ok = top in sys.stdlib_module_names or top == "__future__" or top in MODELS_THIRD_PARTY
            if not ok:
                foreign.append(f"{where(module, line)} imports {name}")
    assert not foreign, "models imports outside torch/einops/its own files:\n" + "\n".join(foreign)
