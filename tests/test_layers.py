"""The library in layers: no module of `playground` reaches back to one that imports it, even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "playground"


def imports_within_the_package() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[name] = targets & set(modules) - {name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    circles = set()

    def follow(path: list[str]) -> None:
        for target in graph[path[-1]]:
            if target in path:
                circle = path[path.index(target):]
                start = circle.index(min(circle))  # one spelling per circle, whichever module it is entered from
                circles.add(tuple(circle[start:] + circle[:start]))
            else:
                follow(path + [target])

    for module in graph:
        follow([module])
    return circles


def test_the_circle_finder_finds_a_circle_through_a_function_level_import():
    assert import_circles({"evaluate": {"setup"}, "setup": {"explore"}, "explore": {"evaluate"}, "unet": set()}) == {
        ("evaluate", "setup", "explore")}


def test_the_library_has_no_import_circles():
    graph = imports_within_the_package()
    assert {"evaluate", "setup", "explore", "classifier"} <= set(graph)
    assert import_circles(graph) == set()
