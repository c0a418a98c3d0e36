"""The data package's modules import one another one way: no cycle, not even through a function-level import."""

import ast
from pathlib import Path

import video_swin.data

PACKAGE = Path(video_swin.data.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of the data package that ``path`` imports anywhere in its body (``from .x import ...``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:  # from . import x
                out.update(alias.name for alias in node.names)
    return out


def test_no_import_cycle_between_data_modules():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "decoders" not in graph["isolated"] and "isolated" not in graph["decoder_base"]
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
