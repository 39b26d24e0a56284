"""Reading the course's nbgrader notebooks as code.

A source notebook mixes four kinds of code cell, told apart by metadata:

* **solution** cells (nbgrader ``solution: true``): one graded function or class,
  the reference code between ``### BEGIN SOLUTION`` / ``### END SOLUTION``;
* **export** cells (tag ``export``): library code the student is given (imports,
  constants, classes built from the graded functions);
* **test** cells (nbgrader ``grade: true``): visible and hidden tests;
* everything else: demos, plots, training runs.

``load_notebook`` executes only the first two kinds, in order, into a fresh module,
so tests, the exporter and outside checkers get the notebook's library without
running its demos.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any

EXPORT_TAG = "export"
BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"


class NotebookLoadError(RuntimeError):
    """A library cell of a notebook could not be executed."""


def read_notebook(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NotebookLoadError(f"{path} is not valid notebook JSON: {exc}") from exc


def cell_source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def nbgrader_meta(cell: dict[str, Any]) -> dict[str, Any]:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def cell_kind(cell: dict[str, Any]) -> str:
    """One of ``markdown``, ``solution``, ``test``, ``export``, ``demo``."""
    if cell.get("cell_type") != "code":
        return cell.get("cell_type", "raw")
    meta = nbgrader_meta(cell)
    if meta.get("solution"):
        return "solution"
    if meta.get("grade"):
        return "test"
    if EXPORT_TAG in cell.get("metadata", {}).get("tags", []):
        return "export"
    return "demo"


def cell_label(index: int, cell: dict[str, Any]) -> str:
    grade_id = nbgrader_meta(cell).get("grade_id")
    return f"cell {index}" + (f" ({grade_id})" if grade_id else "")


def library_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index, cell) of the solution and export cells, in notebook order."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if cell_kind(c) in ("solution", "export")]


def strip_solution_markers(source: str) -> str:
    """The reference code with the nbgrader marker lines removed."""
    keep = [ln for ln in source.splitlines() if ln.strip() not in (BEGIN_SOLUTION, END_SOLUTION)]
    return "\n".join(keep)


def library_source(nb: dict[str, Any], *, positions: bool = True) -> list[tuple[str, str]]:
    """(label, code) of every library cell, markers stripped.

    Labels are ``"cell 13 (rollout)"``, or with ``positions=False`` just the grade id (``"rollout"``): the
    export and its digest use those, so a markdown cell added above does not change the exported module
    (and the trained artifacts keyed on it).
    """
    if positions:
        return [(cell_label(i, c), strip_solution_markers(cell_source(c))) for i, c in library_cells(nb)]
    return [(nbgrader_meta(c).get("grade_id") or "library cell", strip_solution_markers(cell_source(c)))
            for _, c in library_cells(nb)]


def source_digest(path: str | Path) -> str:
    """sha256 of a notebook's library code: it changes exactly when its export changes."""
    nb = read_notebook(path)
    h = hashlib.sha256()
    for label, code in library_source(nb, positions=False):
        h.update(label.encode() + b"\0" + code.encode() + b"\0")
    return h.hexdigest()


def _module_name(path: Path) -> str:
    stem = "".join(ch if ch.isalnum() else "_" for ch in path.stem)
    return f"notebook_{stem}"


def load_notebook(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Return a module holding the notebook's library definitions.

    Solution cells and cells tagged ``export`` run in order in a fresh module;
    demo, plot, training and test cells do not run. A failing cell raises
    :class:`NotebookLoadError` naming the notebook and the cell.
    """
    path = Path(path).resolve()
    nb = read_notebook(path)
    module = types.ModuleType(name or _module_name(path))
    module.__file__ = str(path)
    # Registered before running so that dataclasses, pickling and typing can find it.
    sys.modules[module.__name__] = module
    for label, code in library_source(nb):
        if any(ln.lstrip().startswith(("%", "!")) for ln in code.splitlines()):
            raise NotebookLoadError(f"{path.name}, {label}: IPython magics are not allowed in library cells")
        try:
            exec(compile(code, f"<{path.name} {label}>", "exec"), module.__dict__)
        except Exception as exc:
            raise NotebookLoadError(
                f"{path.name}, {label} failed while loading: {type(exc).__name__}: {exc}"
            ) from exc
    return module
