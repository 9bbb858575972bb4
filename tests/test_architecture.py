"""The folder tree is the architecture: which part of `pipeline` may import which, and what a
stage module holds.

Every import statement is read from the source (function-level ones too; those under
`if TYPE_CHECKING:` are only for type checkers and do not count). See docs/architecture.md.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "pipeline"
# part -> the parts it may import (a part always may import itself)
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "runner": {"config", "core"},
    "models": {"config", "core"},
    "training": {"config", "core", "models"},
    "kaggle": {"config", "core", "training"},
    "stages": {"config", "core", "runner", "models", "training", "kaggle"},
    "commands": {"config", "core", "runner", "models", "training", "kaggle"},
    "cli": {"config", "core"},  # commands' modules are imported from its table, at run time
    "__main__": {"cli"},
    "__init__": set(),
}


def part_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def pipeline_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every runtime import of a `pipeline.*` module in a file."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.lineno, child.module))
            visit(child)

    visit(ast.parse(path.read_text()))
    return [(line, name) for line, name in found if name.split(".")[0] == "pipeline"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    part = part_of(path)
    assert part in ALLOWED, f"{part}: a new part of the package needs a rule here"
    for line, module in pipeline_imports(path):
        target = module.split(".")[1] if "." in module else "__init__"
        if target == part:
            if part in ("stages", "commands"):  # one module per command: none imports another
                assert module == f"pipeline.{part}", f"{path}:{line} imports {module}"
            continue
        assert target in ALLOWED[part], f"{path}:{line}: {part} may not import {module}"


def test_every_module_of_stages_and_commands_is_one_command():
    from pipeline.cli import COMMANDS

    modules = [module for module, _ in COMMANDS.values()]
    assert len(set(modules)) == len(modules)
    assert set(modules) == {
        f"pipeline.{package}.{p.stem}"
        for package in ("stages", "commands")
        for p in (PACKAGE / package).glob("*.py")
        if p.stem != "__init__"
    }


def test_the_rules_catch_a_sideways_import(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pipeline.stages.tune import x\n"
        "def main():\n    from pipeline.stages.predict import y\n"
    )
    assert pipeline_imports(stage) == [(5, "pipeline.stages.predict")]


# what the top level of a stage module may hold: its docstring, imports (`if TYPE_CHECKING:` ones
# too), constants (an UPPER_CASE name bound to a literal), `add_arguments(parser)` and
# `main(cfg, args)`; the stage's work is in main (and functions nested in it), its logic below
STAGE_FUNCTIONS = {"main": ["cfg", "args"], "add_arguments": ["parser"]}


def _is_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.Import | ast.ImportFrom) or (
        _type_checking_only(node) and all(_is_import(n) for n in node.body + node.orelse)
    )


def _is_constant(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets, value = [node.target], node.value
    else:
        return False
    if not all(isinstance(t, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", t.id) for t in targets):
        return False
    try:
        ast.literal_eval(value)
    except ValueError:
        return False
    return True


def stage_logic(source: str) -> list[tuple[int, str]]:
    """(line, statement) of every top-level statement of a stage module beyond what it may hold."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    found = []
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name in STAGE_FUNCTIONS:
            if [a.arg for a in node.args.args] == STAGE_FUNCTIONS[node.name]:
                continue
        elif _is_import(node) or _is_constant(node):
            continue
        found.append((node.lineno, ast.unparse(node).splitlines()[0]))
    return found


STAGES = sorted(p for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.stem)
def test_stages_are_thin(path):
    source = path.read_text()
    assert stage_logic(source) == [], f"{path}: only {', '.join(STAGE_FUNCTIONS)} and constants"
    assert "main" in {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


def test_the_rules_catch_module_level_logic():
    source = (
        '"""A stage."""\n'
        "import argparse\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pipeline.config import Config\n"
        "SPLITS = ('oof', 'test')\n"
        "def add_arguments(parser):\n    pass\n"
        "def main(cfg, args):\n    def body():\n        pass\n"
        "def helper(cfg):\n    pass\n"
        "class Report:\n    pass\n"
        "cache = {}\n"
        "LIMIT = len(SPLITS)\n"
        "if SPLITS:\n    import json\n"
        "print('imported')\n"
    )
    assert [line for line, _ in stage_logic(source)] == [12, 14, 16, 17, 18, 20]
    assert stage_logic("def main(cfg):\n    pass\n") == [(1, "def main(cfg):")]
