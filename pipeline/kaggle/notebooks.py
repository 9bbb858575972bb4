"""Kernel notebooks from the percent-format templates in `kernels/` (jupytext).

The kernel's `parameters` cell gets the config's values (as papermill injects them) and the shared
cells of `kernels/offline_install.py` follow it.
"""

from __future__ import annotations

import ast
from typing import Any

from pipeline.core.errors import CellpipeError
from pipeline.kaggle.wheels import SOURCE_ROOT

TEMPLATES = SOURCE_ROOT / "kernels"
SHARED_TEMPLATE = "offline_install"
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def _template_cells(name: str) -> list[Any]:
    import jupytext

    path = TEMPLATES / f"{name}.py"
    if not path.is_file():
        raise CellpipeError(f"missing kernel template {path}")
    text = path.read_text()
    start = text.find("# %%")  # what precedes the first cell is the template's own note
    return jupytext.reads(text[max(start, 0) :], fmt="py:percent").cells


def _assigned_names(source: str) -> list[str]:
    tree = ast.parse(source)
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]


def notebook(kind: str, parameters: dict[str, Any]) -> str:
    """The kernel's .ipynb text: its template with `parameters` injected and the shared cells."""
    import nbformat

    cells = _template_cells(kind)
    where = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    if len(where) != 1:
        raise CellpipeError(f"kernels/{kind}.py: expected one cell tagged parameters")
    cell = cells[where[0]]
    names = _assigned_names(cell.source)
    if sorted(names) != sorted(parameters):
        raise CellpipeError(
            f"kernels/{kind}.py: its parameters {sorted(names)} are not {sorted(parameters)}"
        )
    cell.source = "# parameters written by `cellpipe kernels`\n" + "\n".join(
        f"{name} = {parameters[name]!r}" for name in names
    )
    cells[where[0] + 1 : where[0] + 1] = _template_cells(SHARED_TEMPLATE)
    nb = nbformat.v4.new_notebook(cells=[], metadata=NOTEBOOK_METADATA)
    for c in cells:  # fresh cells: ids, no jupytext metadata
        new = (
            nbformat.v4.new_markdown_cell
            if c.cell_type == "markdown"
            else nbformat.v4.new_code_cell
        )
        nb.cells.append(
            new(c.source, metadata={"tags": c.metadata["tags"]} if "tags" in c.metadata else {})
        )
    nbformat.validate(nb)
    return nbformat.writes(nb)
