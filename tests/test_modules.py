"""The package's layout: input modules import one another in one direction only."""

import ast
from pathlib import Path

import spice_learn

PACKAGE = Path(spice_learn.__file__).parent


def _imports():
    """``{module: set of package modules it imports}``, lazy imports inside functions too."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # from . import name
                    deps.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists())
        graph[path.stem] = deps - {path.stem}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_import_cycle_between_package_modules():
    assert _cycle(_imports()) is None


def test_the_cycle_finder_finds_a_cycle():
    graph = _imports()
    graph["image_decode"] = graph["image_decode"] | {"image_input"}
    assert _cycle(graph) is not None


def test_image_stream_does_not_import_image_input():
    graph = _imports()
    assert "image_input" not in graph["image_stream"]
    assert "image_stream" in graph["image_input"]  # the one direction
