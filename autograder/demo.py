"""The instructor demo: execute the source notebooks end to end with nbclient.

Each notebook runs in a fresh kernel whose working directory is the notebook's folder.
Executed copies go to ``<out>/<id>.ipynb`` and every figure shown through
``helpers.plots.show`` is saved as ``<out>/plots/<id>/<name>.png``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from autograder.course import ROOT, check_assignment, nbgrader_env
from helpers.export import refresh


@dataclass
class ExecutionResult:
    notebook: str
    seconds: float
    plots: list[Path] = field(default_factory=list)
    error: str | None = None
    stderr_cells: list[int] = field(default_factory=list)
    executed: nbformat.NotebookNode | None = None


def execute_notebook(path: Path, out_dir: Path, *, tiny: bool, cell_timeout: int | None = None,
                     progress: bool = True) -> ExecutionResult:
    """Run every cell of ``path``; stop at the first error and report the cell."""
    nb_id = path.stem
    plot_dir = out_dir / "plots" / nb_id
    plot_dir.mkdir(parents=True, exist_ok=True)
    env = nbgrader_env()
    env["COURSE_PLOT_DIR"] = str(plot_dir)
    if tiny:
        env["NBGRADER_EXECUTION"] = "autograde"  # the notebooks' tiny configuration
    else:
        env.pop("NBGRADER_EXECUTION", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Idle OpenMP threads must not spin: on a busy 2-core machine PPO iterations stalled 26-47 s without it.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    result = ExecutionResult(nb_id, 0.0)
    start = time.perf_counter()
    cells = list(enumerate(nb.cells))
    if progress:
        from tqdm.auto import tqdm

        cells = tqdm(cells, desc=nb_id, unit="cell")
    with client.setup_kernel(env=env, cwd=str(path.parent)):
        for index, cell in cells:
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as exc:
                result.error = f"{nb_id}: cell {index} failed:\n{exc}"
                break
            if cell.cell_type == "code" and any(
                o.get("output_type") == "stream" and o.get("name") == "stderr" for o in cell.get("outputs", [])
            ):
                result.stderr_cells.append(index)
    result.seconds = time.perf_counter() - start
    result.plots = sorted(plot_dir.glob("*.png"))
    result.executed = nb
    nbformat.write(nb, out_dir / f"{nb_id}.ipynb")
    return result


def prebuild_tiny_artifacts(ids: list[str]) -> None:
    """Build the tiny models the notebooks load, here: under grading a notebook refuses to build one."""
    from autograder.course import NOTEBOOK_ARTIFACTS
    from helpers import artifacts

    for name in dict.fromkeys(name for nb_id in ids for name in NOTEBOOK_ARTIFACTS.get(nb_id, ())):
        print(f"[demo] tiny {name}: from the cache, or built now ...", flush=True)
        artifacts.get(name, tiny=True)


def run_demo(out: Path, ids: list[str], *, tiny: bool = False) -> int:
    refresh(ROOT)  # the notebooks import earlier notebooks' code from minirlhf/
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        prebuild_tiny_artifacts(ids)
    for nb_id in ids:
        path = check_assignment(nb_id)
        print(f"[demo] {nb_id}: executing {path.relative_to(ROOT)} ({'tiny' if tiny else 'full'} configuration)",
              flush=True)
        res = execute_notebook(path, out, tiny=tiny)
        if res.error:
            print(f"[demo] FAILED after {res.seconds:.0f} s — executed copy: {out / (nb_id + '.ipynb')}\n{res.error}")
            return 1
        print(f"[demo] {nb_id}: done in {res.seconds:.0f} s, {len(res.plots)} plots in {out / 'plots' / nb_id}",
              flush=True)
    print(f"[demo] all done. Executed notebooks: {out}/<id>.ipynb   plots: {out}/plots/<id>/*.png")
    return 0
