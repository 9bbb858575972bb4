"""The folder tree is the architecture: which part of `pipeline` may import which.

Every import statement is read from the source (function-level ones too; those under
`if TYPE_CHECKING:` are only for type checkers and do not count). See docs/architecture.md.
"""

import ast
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
