"""The "How to work in this notebook" cell every notebook opens with, generated from the notebook itself.

The points table is read from the graded test cells, so it cannot drift from what nbgrader grades:

    .venv/bin/python -m autograder.workflow          # rewrite the cell in every source notebook
    .venv/bin/python -m autograder.workflow --check  # exit 1 if a notebook's cell is missing or stale

The cell goes right after the notebook's title cell and starts with ``HEADING``. The same command guards
the demo cells: a demo cell that uses a graded function (directly, or through a name an earlier demo cell
made with one) starts with ``runtime.needs("name", ...)``, so that in a student's copy it stops in one line
("write `name` first") instead of a traceback followed by a ``NameError`` in every cell below.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from helpers.export import source_notebooks
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## How to work in this notebook"

# What Run All costs at full size (measured by `make demo` on 2 CPU cores), and what is heavy in it.
HEAVY_CELLS: dict[str, str] = {
    "01_tokenizer_gpt2": "Run All takes under a minute: the model demos load the trained default model "
                         "(or GPT-2 small, when its weights are present).",
    "02_sft": "Run All takes about 1–2 minutes: the SFT training demo fine-tunes the default model "
              "(with a progress bar).",
    "03_preference_data": "Run All takes about a minute: the demos sample responses from the SFT model "
                          "(with progress bars).",
    "04_reward_model": "Run All takes about 2–3 minutes: the demo trains the reward model on a few thousand "
                       "comparisons (with a progress bar).",
    "05_value_head": "Run All takes about 2 minutes: the demo fits both critic designs (with progress bars).",
    "06_gae": "Run All takes seconds.",
    "07_ppo_loss": "Run All takes seconds.",
    "08_ppo_loop": "Run All takes about 3–4 minutes: two PPO runs of 40 iterations each (with progress bars).",
}
GRADING_NOTE = ("While grading, every heavy cell runs a tiny configuration, so grading takes seconds "
                "whatever you run here.")


def graded_points(notebook: Path) -> list[tuple[str, float, float]]:
    """``(function, math points, validation points)`` per graded function, in notebook order.

    A test cell ``test_<name>`` grades ``<name>``'s math; ``test_<name>_errors`` its input checks.
    """
    rows: dict[str, list[float]] = {}
    for cell in read_notebook(notebook)["cells"]:
        if cell_kind(cell) != "test":
            continue
        meta = nbgrader_meta(cell)
        grade_id, points = meta["grade_id"], float(meta.get("points", 0))
        name = grade_id.removeprefix("test_")
        validation = name.endswith("_errors")
        name = name.removesuffix("_errors")
        row = rows.setdefault(name, [0.0, 0.0])
        row[1 if validation else 0] += points
    return [(name, math, checks) for name, (math, checks) in rows.items()]


def _points(x: float) -> str:
    return f"{x:g}" if x else "–"


def how_to_work(nb_id: str, notebook: Path) -> str:
    """The markdown of the cell for one notebook."""
    rows = graded_points(notebook)
    total_math, total_checks = sum(r[1] for r in rows), sum(r[2] for r in rows)
    table = "\n".join(f"| `{name}` | {_points(math)} | {_points(checks)} |" for name, math, checks in rows)
    return f"""{HEADING}

1. **One function at a time.** Each graded function's body holds `raise NotImplementedError()`: replace it with
   your code. Its docstring is the specification — the math, the shapes and dtypes, the edge cases.
2. **Run its test cell**, right below it. The visible checks print what passed; hidden tests run only when the
   notebook is graded, so a visible pass is necessary, not sufficient. Input checks a docstring promises under
   *Raises* are graded in their own small cell, `test_<name>_errors`: correct math earns its points either way.
3. **Validate before you submit** (the *Validate* button in the assignment list, or `nbgrader validate`): it
   runs the whole notebook in a fresh kernel, as the grader does.
4. **Run All stops at the first function you have not written yet** — that is expected: the cells below it
   need it. A demo cell that needs an unwritten function says so in one line ("write `...` first").
5. **Time.** {HEAVY_CELLS.get(nb_id, "Run All takes seconds.")} {GRADING_NOTE}

| graded function | points for the math | points for input checks |
|---|---|---|
{table}
| **total: {total_math + total_checks:g}** | **{total_math:g}** | **{_points(total_checks)}** |"""


GUARD = "runtime.needs("


def graded_names(nb: dict) -> list[str]:
    """Functions and classes the student writes: the top-level definitions of the solution cells."""
    names = []
    for cell in nb["cells"]:
        if cell_kind(cell) == "solution":
            names += [n.name for n in ast.parse(cell_source(cell)).body
                      if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return names


def _defined(tree: ast.Module) -> set[str]:
    """Names a cell binds at top level (assignments, definitions, imports, loop targets)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            out |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return out


def _without_guard(source: str) -> str:
    lines = source.split("\n")
    return "\n".join(lines[1:]) if lines and lines[0].startswith(GUARD) else source


def guard_demo_cells(nb: dict) -> bool:
    """Give each demo cell the ``runtime.needs(...)`` line its graded dependencies call for; True if changed."""
    graded = graded_names(nb)
    needs_of: dict[str, set[str]] = {name: {name} for name in graded}  # name -> graded functions behind it
    for cell in nb["cells"]:  # a graded function that calls others needs them written too (one level suffices
        if cell_kind(cell) == "solution":  # for the course: solutions call earlier graded functions directly)
            for node in ast.parse(cell_source(cell)).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    calls = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(graded)
                    needs_of[node.name] = needs_of[node.name] | set().union(*(needs_of[c] for c in calls))
    changed = False
    for cell in nb["cells"]:
        if cell_kind(cell) != "demo":
            continue
        old = cell_source(cell)
        body = _without_guard(old)
        tree = ast.parse(body)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        needed = set().union(*(needs_of[u] for u in used if u in needs_of))
        for name in _defined(tree) - set(graded):
            needs_of[name] = needs_of.get(name, set()) | needed
        ordered = [g for g in graded if g in needed]
        new = body
        if ordered:  # the guard line: runtime.needs("f", "g")
            new = GUARD + ", ".join(f'"{g}"' for g in ordered) + ")\n" + body
        if new != old:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    return changed


def _markdown_cell(text: str) -> dict:
    lines = text.splitlines(keepends=True)
    return {"cell_type": "markdown", "id": "how-to-work", "metadata": {}, "source": lines}


def update(notebook: Path, nb_id: str, *, write: bool) -> bool:
    """Put the current cell after the title cell; True if the notebook changed (or would change)."""
    from autograder.authoring import write_notebook

    nb = read_notebook(notebook)
    text = how_to_work(nb_id, notebook)
    cells = nb["cells"]
    at = next((i for i, c in enumerate(cells)
               if c["cell_type"] == "markdown" and cell_source(c).lstrip().startswith(HEADING)), None)
    changed = guard_demo_cells(nb)
    if at is not None and "id" not in cells[at]:
        cells[at]["id"], changed = "how-to-work", True
    if at is None or cell_source(cells[at]) != text:
        changed = True
        if at is None:
            cells.insert(1, _markdown_cell(text))
        else:
            cells[at]["source"] = _markdown_cell(text)["source"]
    if changed and write:
        write_notebook(nb, notebook)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale notebooks (exit 1 if any)")
    args = parser.parse_args(argv)
    stale = [nb_id for nb_id, path in source_notebooks(ROOT) if update(path, nb_id, write=not args.check)]
    for nb_id in stale:
        print(f"{nb_id}: how-to-work cell {'is missing or stale' if args.check else 'written'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
