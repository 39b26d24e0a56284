"""Run a notebook's graded test cells (visible + hidden) against the reference code or a wrong variant.

Used by the per-notebook tests to check the bar the course sets for its hidden tests: the reference
solution passes every test cell, and each plausible wrong implementation fails at least one of the
cells that grade its math -- while validation details are graded only in their own cells.
"""

from __future__ import annotations

import contextlib
import io
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers import load_notebook
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook


def graded_cells(notebook: str | Path) -> dict[str, str]:
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
    for grade_id, source in graded_cells(notebook).items():
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


def surviving_variants(notebook: str | Path, module: types.ModuleType,
                       variants: list[tuple[str, Mapping[str, Any], str]]) -> list[str]:
    """The wrong variants ``(description, {name: wrong definition}, grading cell)`` that pass their cell."""
    survivors = []
    for what, replace, cell in variants:
        result = run_test_cells(notebook, replace, module=module, only=lambda gid, cell=cell: gid == cell)
        if result[cell] is None:
            survivors.append(f"{what} ({cell})")
    return survivors


def validation_cell_problems(notebook: str | Path) -> list[str]:
    """Validation cells (``<id>_errors``) without a math cell ``<id>``, or worth more than 1 point."""
    from helpers.notebook import cell_kind, nbgrader_meta, read_notebook

    points = {nbgrader_meta(c)["grade_id"]: nbgrader_meta(c).get("points")
              for c in read_notebook(notebook)["cells"] if cell_kind(c) == "test"}
    problems = []
    for gid, pts in points.items():
        if gid.endswith("_errors"):
            if gid[: -len("_errors")] not in points:
                problems.append(f"{gid}: no math cell {gid[: -len('_errors')]}")
            if pts != 1:
                problems.append(f"{gid}: {pts} points (validation is worth 1)")
    return problems


def run_silently(notebook: str | Path, module: types.ModuleType) -> tuple[dict[str, BaseException | None], str, list[str]]:
    """``run_test_cells`` of the reference, with what it wrote to stderr and the warnings it raised (nbgrader
    gives 0 to a test cell that writes anything to stderr)."""
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        results = run_test_cells(notebook, module=module)
    return results, err.getvalue(), [str(w.message) for w in caught]
