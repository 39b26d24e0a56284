"""A plain-text view of a course notebook, for authors and code review.

``python -m autograder to-text NB.ipynb`` prints the notebook as text and
``python -m autograder from-text FILE.py NB.ipynb`` writes it back: the ``.ipynb``
stays the one source of truth, the text is a scratch view for editing in any editor
(it is never committed). Each cell starts with a header line::

    # %% [markdown]                 lines below are "# "-prefixed markdown
    # %% [export]                   library code given to the student
    # %% [solution] GRADE_ID        one graded function between solution markers
    # %% [test] GRADE_ID points=N   visible test, then hidden tests between markers
    # %% [demo]                     demos, plots, training: never loaded as library
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from helpers.notebook import EXPORT_TAG, cell_kind, cell_source, nbgrader_meta

HEADER = re.compile(r"^# %% \[(markdown|export|solution|test|demo)\](.*)$")

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _nbgrader(grade_id: str, *, solution: bool, grade: bool, locked: bool, points: float | None = None) -> dict:
    meta: dict[str, Any] = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if points is not None:
        meta["points"] = points
    return meta


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and lines[-1].endswith("\n"):
        lines[-1] = lines[-1][:-1]
    return lines


def text_to_notebook(text: str) -> dict[str, Any]:
    chunks: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            chunks.append((m.group(1), m.group(2).strip(), []))
        elif chunks:
            chunks[-1][2].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %% [...]' header: {line!r}")
    cells = []
    export_count = 0
    for kind, args, body in chunks:
        while body and not body[-1].strip():
            body.pop()
        if kind == "markdown":
            md = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body]
            cells.append({"cell_type": "markdown", "metadata": {}, "source": _lines("\n".join(md))})
            continue
        src = _lines("\n".join(body))
        metadata: dict[str, Any] = {}
        parts = args.split()
        if kind == "export":
            export_count += 1
            metadata["tags"] = [EXPORT_TAG]
            metadata["nbgrader"] = _nbgrader(f"export_{export_count}", solution=False, grade=False, locked=True)
        elif kind == "solution":
            if not parts:
                raise ValueError("a solution cell needs a grade id: '# %% [solution] NAME'")
            metadata["nbgrader"] = _nbgrader(parts[0], solution=True, grade=False, locked=False)
        elif kind == "test":
            if not parts:
                raise ValueError("a test cell needs a grade id: '# %% [test] NAME points=N'")
            opts = dict(p.split("=", 1) for p in parts[1:])
            metadata["nbgrader"] = _nbgrader(
                parts[0], solution=False, grade=True, locked=True, points=float(opts.get("points", 1))
            )
        cells.append({"cell_type": "code", "execution_count": None, "metadata": metadata, "outputs": [], "source": src})
    for i, cell in enumerate(cells):
        # nbformat 4.5 wants a stable id per cell: the grade id where there is one.
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        cell["id"] = re.sub(r"[^A-Za-z0-9_-]", "-", grade_id or f"{cell['cell_type']}-{i}")[:64]
    return {
        "cells": cells,
        "metadata": {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_to_text(nb: dict[str, Any]) -> str:
    out = []
    for cell in nb["cells"]:
        kind = cell_kind(cell)
        src = cell_source(cell)
        meta = nbgrader_meta(cell)
        if kind == "markdown":
            out.append("# %% [markdown]")
            out.extend(("# " + ln) if ln else "#" for ln in src.splitlines())
        else:
            header = f"# %% [{kind}]"
            if kind == "solution":
                header += f" {meta['grade_id']}"
            elif kind == "test":
                pts = meta.get("points", 1)
                header += f" {meta['grade_id']} points={int(pts) if float(pts).is_integer() else pts}"
            out.append(header)
            out.append(src)
        out.append("")
    return "\n".join(out)


def write_notebook(nb: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def strip_outputs(nb: dict[str, Any]) -> dict[str, Any]:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb
