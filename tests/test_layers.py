"""The library in layers: no module of `playground` reaches back to one that imports it, even inside a function."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

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


CLIS = ["card", "classifier", "denoising_classify", "evaluate", "invert", "jacobian", "patch", "probes", "sample", "soup",
        "study", "sweep", "train", "train_family"]


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_says_what_each_option_does_and_its_default(cli, monkeypatch):
    parsers = []

    def keep_the_parser(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", keep_the_parser)
    main = importlib.import_module(f"playground.{cli}").main
    with pytest.raises(SystemExit):
        main([])
    for parser in with_subcommands(parsers[0]):
        text = "".join(parser.format_help().split())  # argparse wraps lines anywhere, inside a default too
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} says nothing of what it does"
            if action.default not in (None, False) and action.option_strings and "default" not in action.help:
                assert "".join(f"(default: {action.default})".split()) in text, f"{parser.prog} {action.option_strings}"
        assert "(default:None)" not in text


def with_subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and those of its subcommands (`probes train`, `probes show`), whose options its help does not list."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [sub for choice in action.choices.values() for sub in with_subcommands(choice)]
    return found
