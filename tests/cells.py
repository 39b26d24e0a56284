"""Run a notebook's graded test cells (visible + hidden) against the reference code or a wrong variant.

Used by the per-notebook tests to check the bar the course sets for its hidden tests: the reference
solution passes every test cell, and each plausible wrong implementation fails at least one of the
cells that grade its math -- while validation details are graded only in their own cells.
"""

from __future__ import annotations

import contextlib
import io
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers import load_notebook
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook


def test_cells(notebook: str | Path) -> dict[str, str]:
    """{grade_id: source} of every graded test cell, in notebook order."""
    nb = read_notebook(notebook)
    return {nbgrader_meta(c)["grade_id"]: cell_source(c) for c in nb["cells"] if cell_kind(c) == "test"}


def run_test_cells(
    notebook: str | Path,
    replace: Mapping[str, Any] | None = None,
    *,
    module: types.ModuleType | None = None,
    only: Callable[[str], bool] | None = None,
) -> dict[str, BaseException | None]:
    """Execute each test cell in a copy of the notebook's library namespace; {grade_id: error or None}.

    ``replace`` swaps names in that namespace first (e.g. ``{"preference_loss": wrong_loss}``), as a
    student's own definition would. Each cell runs in its own copy, so one cell cannot repair another.
    Output is swallowed.
    """
    module = module or load_notebook(notebook)
    results: dict[str, BaseException | None] = {}
    for grade_id, source in test_cells(notebook).items():
        if only is not None and not only(grade_id):
            continue
        namespace = dict(vars(module))
        namespace.update(replace or {})
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, f"<{grade_id}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 -- a failing cell, whatever it raised
            results[grade_id] = exc
        else:
            results[grade_id] = None
    return results


def failing(results: Mapping[str, BaseException | None]) -> dict[str, str]:
    """{grade_id: 'Type: message'} of the cells that failed."""
    return {k: f"{type(v).__name__}: {v}"[:300] for k, v in results.items() if v is not None}
