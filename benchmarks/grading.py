"""Class-scale grading: students per hour per notebook with 1 and 2 workers, peak memory, determinism.

    .venv/bin/python benchmarks/grading.py                       # every notebook, 8 students, 10 repeats
    .venv/bin/python benchmarks/grading.py --notebooks 06_gae --students 6

For each notebook, a class of ``--students`` copies of the reference solution is graded by
``python -m autograder grade-all --workers 1`` and then ``--workers 2`` (the command as an instructor
runs it: worker start-up included, the generated assignment already cached). Students per hour =
students / wall time; the target is >= 1.7x with 2 workers on 2 cores. Peak memory: the largest
resident size of a grading worker process and of any kernel it started (``ru_maxrss``).

Determinism: the cheapest notebook (06) is submitted ``--repeat`` times, with two functions wrong
(one returns float64, one is not written), and graded with 2 workers: every copy must get the same
score, per-cell messages and feedback HTML. The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autograder import course, grading  # noqa: E402
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook, strip_solution_markers  # noqa: E402

CHEAPEST = "06_gae"


def grade_class(subs: Path, out: Path, workers: int) -> tuple[float, list[dict]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade-all", str(subs), "--out", str(out),
                           "--workers", str(workers)], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"grade-all failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads((out / "results.json").read_text(encoding="utf-8"))


def write_class(subs: Path, nb_id: str, notebook: dict | Path, n: int) -> None:
    text = notebook.read_text(encoding="utf-8") if isinstance(notebook, Path) else json.dumps(notebook)
    for i in range(n):
        dest = subs / f"student{i:02d}" / nb_id / f"{nb_id}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")


def mixed_submission(tmp: Path) -> dict:
    """Notebook 06 as a student might hand it in: every function written, but masked_whiten returns
    float64 and compute_gae is not written."""
    crs = grading.prepare_course(tmp / "course", [CHEAPEST])
    nb = copy.deepcopy(read_notebook(crs / "release" / CHEAPEST / f"{CHEAPEST}.ipynb"))
    source = read_notebook(ROOT / "notebooks" / CHEAPEST / f"{CHEAPEST}.ipynb")
    solutions = {nbgrader_meta(c)["grade_id"]: strip_solution_markers(cell_source(c))
                 for c in source["cells"] if cell_kind(c) == "solution"}
    for cell in nb["cells"]:
        gid = nbgrader_meta(cell).get("grade_id")
        if cell_kind(cell) != "solution" or gid == "compute_gae":
            continue
        cell["source"] = solutions[gid]
        if gid == "masked_whiten":
            cell["source"] = (solutions[gid].replace("def masked_whiten(", "def _masked_whiten(", 1)
                              + "\n\n\ndef masked_whiten(*args, **kwargs):\n    return _masked_whiten(*args, **kwargs).double()\n")
    return nb


def peak_mib(results: list[dict], key: str) -> float:
    return round(max(r.get(key, 0) for r in results) / 2**20, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notebooks", nargs="*", default=course.notebook_ids())
    p.add_argument("--students", type=int, default=8, help="class size per notebook and worker count")
    p.add_argument("--repeat", type=int, default=10, help="copies of one submission for the determinism check")
    args = p.parse_args()
    figures: dict = {"cores": os.cpu_count(), "load_average_before": os.getloadavg()[0], "notebooks": {}}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-grading-") as tmp:
        tmp = Path(tmp)
        for nb_id in args.notebooks:
            with grading.course_environment():  # generate (or find cached) the assignment: not part of the timing
                grading.prepare_course(tmp / f"template-{nb_id}", [nb_id])
            subs = tmp / f"class-{nb_id}"
            write_class(subs, nb_id, ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb", args.students)
            row = {}
            for workers in (1, 2):
                seconds, results = grade_class(subs, tmp / f"out-{nb_id}-{workers}", workers)
                full = all(r["score"] == r["max_score"] for r in results)
                row[f"workers_{workers}"] = {
                    "seconds": round(seconds, 1),
                    "students_per_hour": round(3600 * len(results) / seconds),
                    "seconds_per_student_in_worker": round(sum(r["seconds"] for r in results) / len(results), 1),
                    "all_full_marks": full,
                    "peak_worker_rss_mib": peak_mib(results, "worker_peak_rss"),
                    "peak_kernel_rss_mib": peak_mib(results, "kernel_peak_rss"),
                }
                print(f"{nb_id}: {workers} worker(s): {len(results)} students in {seconds:.1f} s = "
                      f"{row[f'workers_{workers}']['students_per_hour']} students/hour; full marks: {full}; "
                      f"peak RSS worker {row[f'workers_{workers}']['peak_worker_rss_mib']} MiB, "
                      f"kernel {row[f'workers_{workers}']['peak_kernel_rss_mib']} MiB", flush=True)
            row["speedup_2_vs_1"] = round(row["workers_1"]["seconds"] / row["workers_2"]["seconds"], 2)
            print(f"{nb_id}: 2 workers vs 1: {row['speedup_2_vs_1']}x (target >= 1.7x)", flush=True)
            figures["notebooks"][nb_id] = row

        subs = tmp / "determinism"
        write_class(subs, CHEAPEST, mixed_submission(tmp), args.repeat)
        seconds, results = grade_class(subs, tmp / "out-determinism", 2)
        views = []
        for r in results:
            view = grading.student_view(r)
            view.pop("student")
            html = (tmp / "out-determinism" / "feedback" / r["student"] / CHEAPEST / f"{CHEAPEST}.html")
            views.append((json.dumps(view, sort_keys=True), html.read_text(encoding="utf-8").replace(r["student"], "S")))
        identical = sum(v == views[0] for v in views)
        figures["determinism"] = {"notebook": CHEAPEST, "repeats": len(views), "identical_to_first": identical,
                                  "score": results[0]["score"], "max_score": results[0]["max_score"]}
        print(f"determinism: {identical}/{len(views)} gradings of one submission identical "
              f"(score {results[0]['score']:g}/{results[0]['max_score']:g}, per-cell messages, feedback HTML)")
    figures["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
