"""``python -m autograder COMMAND``: the course's instructor tools.

    export                       write minirlhf/ (reference code) from the source notebooks
    release                      the release schedule: which earlier solutions each folder holds
    release ID... [--out DIR]    nbgrader generate_assignment for these notebooks -> DIR/<id>/
                                 (release notebook k after notebook k-1's deadline: its folder holds
                                 the reference code of notebooks 1..k-1; --all releases every one)
    grade ASSIGNMENT NB [--json] [--feedback DIR]
                                 autograde one submitted notebook in a temporary course
    grade-all SUBMISSIONS [--out DIR] [--workers N]
                                 autograde a class (SUBMISSIONS/<student>/<id>/<id>.ipynb) in N processes,
                                 with grades.csv, feedback per student and report.csv/.png
                                 (both: --time-limit, --cell-timeout, --memory-limit, --output-limit,
                                 --no-sandbox, --show-hidden-tests; see autograder/grading.py)
    demo [--out DIR] [IDS...]    execute the source notebooks end to end, plots saved
    to-text NB / from-text TXT NB   the plain-text authoring view of a notebook
    student-env [--apply] [--exchange DIR]
                                 the commands that hide nbgrader's instructor tools (formgrader,
                                 create assignment) in the students' environment, keeping the
                                 Assignments tab; --apply runs them in this Python's environment
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autograder import authoring, course

ROOT = course.ROOT


def cmd_to_text(args: argparse.Namespace) -> int:
    sys.stdout.write(authoring.notebook_to_text(json.loads(Path(args.notebook).read_text(encoding="utf-8"))))
    return 0


def cmd_from_text(args: argparse.Namespace) -> int:
    nb = authoring.text_to_notebook(Path(args.text).read_text(encoding="utf-8"))
    authoring.write_notebook(nb, args.notebook)
    print(f"wrote {args.notebook} ({len(nb['cells'])} cells)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from helpers.export import export

    for path in export(ROOT):
        print(f"exported {path.relative_to(ROOT)}")
    return 0


def earlier_solutions(nb_id: str) -> str:
    """The reference solutions a release of ``nb_id`` holds in ``minirlhf/``, e.g. ``01-02 (tokenizer_gpt2, sft)``."""
    from helpers.export import module_name

    earlier = course.earlier_notebooks(nb_id)
    if not earlier:
        return "none"
    span = earlier[0][:2] if len(earlier) == 1 else f"{earlier[0][:2]}-{earlier[-1][:2]}"
    return f"{span} ({', '.join(module_name(i) for i in earlier)})"


def release_after(nb_id: str) -> str:
    """When ``nb_id``'s folder may be given out: ``after 05_value_head's deadline`` (or ``any time``)."""
    earlier = course.earlier_notebooks(nb_id)
    return f"after {earlier[-1]}'s deadline" if earlier else "any time"


def print_schedule() -> None:
    """Which earlier solutions each release folder holds, and so when to hand it out."""
    ids = course.notebook_ids()
    rows = [("folder", "give it out", "minirlhf/: solutions of notebooks", "artifacts/")]
    rows += [(i, release_after(i), earlier_solutions(i), ", ".join(course.NOTEBOOK_ARTIFACTS.get(i, ())) or "none")
             for i in ids]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    print("The release of notebook k holds the reference solutions of notebooks 1..k-1 (minirlhf/):\n"
          "give it out only after notebook k-1's deadline.\n")
    for r in rows:
        print("  " + "  ".join(f"{r[c]:<{widths[c]}}" for c in range(3)) + "  " + r[3])
    print("\nRelease chosen notebooks:  python -m autograder release ID... [--out DIR]"
          "\nRelease every notebook:    python -m autograder release --all  (every folder at once)")


def cmd_release(args: argparse.Namespace) -> int:
    if not args.assignments and not args.all:
        print_schedule()
        return 0
    ids = course.notebook_ids() if args.all else list(dict.fromkeys(args.assignments))
    for nb_id in ids:
        course.check_assignment(nb_id)
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="rlhf-release-") as tmp:
        print("[release] building/copying the trained models the notebooks load (first time: minutes) ...", flush=True)
        crs = course.build_course(Path(tmp), ids, full_artifacts=not args.no_artifacts)
        for nb_id in ids:
            print(f"[release] {nb_id}: nbgrader generate_assignment ...", flush=True)
            released = course.generate_assignment(crs, nb_id)
            dest = out / nb_id
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(released, dest)
            print(f"[release] {nb_id} -> {dest}: holds the solutions of {earlier_solutions(nb_id)}; "
                  f"give it out {release_after(nb_id)}")
    print(f"Release written to {out}: give each student folder <id>/ as it is "
          "(notebook, helpers/, minirlhf/, artifacts/), each after the deadline named above.")
    return 0


def print_result(result: dict) -> None:
    """The human-readable lines of one grading result (``grade``/``grade-all`` print them before any JSON)."""
    print(f"{result['student']} / {result['assignment']} / {result.get('notebook', result['assignment'])}.ipynb")
    cells = result.get("cells", [])
    width = max((len(c["grade_id"]) for c in cells), default=10)
    for c in cells:
        mark = "ok  " if c["score"] == c["max_score"] else ("part" if c["score"] > 0 else "FAIL")
        why = f"  {c['message']}" if c.get("message") else ""
        print(f"  {mark} {c['grade_id']:<{width}}  {c['score']:g} / {c['max_score']:g}{why[:160]}")
    for note in result.get("notes", []):
        print(f"  note: {note}")
    if result.get("error"):
        print(f"  error: {result['error']}")
    total = result["max_score"] if result.get("max_score") is not None else "?"
    print(f"  total: {result['score']:g} / {total:g}" if total != "?" else f"  total: {result['score']:g} / ?")


def limits_from(args: argparse.Namespace):
    from autograder.limits import Limits, parse_size

    return Limits(time_limit=args.time_limit, cell_timeout=args.cell_timeout, memory_limit=parse_size(args.memory_limit),
                  output_limit=args.output_limit, max_restarts=args.max_restarts, sandbox=not args.no_sandbox)


def cmd_grade(args: argparse.Namespace) -> int:
    from autograder import grading

    submission = Path(args.notebook).resolve()
    if not submission.is_file():
        raise SystemExit(f"submitted notebook not found: {submission}")
    course.check_assignment(args.assignment)
    try:
        result = grading.grade_one(args.assignment, submission, limits_from(args),
                                   feedback=Path(args.feedback).resolve() if args.feedback else None,
                                   show_hidden_tests=args.show_hidden_tests,
                                   keep=Path(args.keep).resolve() if args.keep else None)
    except course.GradingError as exc:
        if not args.json:
            raise
        print(f"error: {exc}", file=sys.stderr)
        # Outside checkers parse the last line: say what happened instead of printing nothing.
        print(json.dumps({"assignment": args.assignment, "score": 0.0, "max_score": None, "error": str(exc)[-2000:]}))
        return 1
    print_result(result)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_grade_all(args: argparse.Namespace) -> int:
    from autograder import grading

    out = Path(args.out).resolve()
    start = time.monotonic()
    results = grading.grade_all(Path(args.submissions).resolve(), out, limits_from(args), workers=args.workers,
                                show_hidden_tests=args.show_hidden_tests, on_result=print_result)
    print(f"graded {len(results)} notebooks in {time.monotonic() - start:.0f} s with {args.workers} worker(s)")
    print(f"grades: {out / 'grades.csv'}; feedback: {out / 'feedback'}/<student>/<assignment>/; "
          f"what to re-teach: {out / 'report.csv'}, {out / 'report.png'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from autograder.demo import run_demo

    return run_demo(Path(args.out).resolve(), args.assignments or course.notebook_ids(), tiny=args.tiny)


def cmd_student_env(args: argparse.Namespace) -> int:
    from autograder import nbgrader_course

    exchange = args.exchange or nbgrader_course.exchange_root()
    if args.apply:
        nbgrader_course.apply_student_env(exchange)
    else:
        print(nbgrader_course.student_env_instructions(exchange))
    return 0


def add_grading_options(s: argparse.ArgumentParser) -> None:
    from autograder.limits import Limits

    d = Limits()
    s.add_argument("--time-limit", type=float, default=d.time_limit, metavar="SECONDS",
                   help=f"wall-clock limit per notebook (default {d.time_limit:g})")
    s.add_argument("--cell-timeout", type=int, default=d.cell_timeout, metavar="SECONDS",
                   help=f"limit per cell (default {d.cell_timeout}, nbgrader's)")
    s.add_argument("--memory-limit", default="4G", metavar="SIZE", help="memory per kernel, e.g. 2G (default 4G; 0: none)")
    s.add_argument("--output-limit", type=int, default=d.output_limit, metavar="CHARS",
                   help=f"characters a cell may print per stream (default {d.output_limit})")
    s.add_argument("--max-restarts", type=int, default=d.max_restarts,
                   help=f"kernel restarts after crashes/timeouts per notebook (default {d.max_restarts})")
    s.add_argument("--no-sandbox", action="store_true", help="limits only: no Landlock, no test-tool guard")
    s.add_argument("--show-hidden-tests", action="store_true",
                   help="feedback shows the hidden tests' source (default: hidden, so assignments can be reused)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("export", help="write minirlhf/ from the source notebooks")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("release", help="generate the student release of chosen notebooks (none: show the schedule)")
    s.add_argument("assignments", nargs="*", help="notebook ids (none: print which earlier solutions each holds)")
    s.add_argument("--all", action="store_true", help="release every notebook at once")
    s.add_argument("--out", default=str(ROOT / "release"), help="release folder (default: release/)")
    s.add_argument("--no-artifacts", action="store_true",
                   help="ship only the tiny grading models, not the full-size ones the demos load "
                        "(a release cannot train them: give students those artifacts another way, e.g. $RLHF_ARTIFACTS)")
    s.set_defaults(fn=cmd_release)

    s = sub.add_parser("grade", help="autograde one submitted notebook")
    s.add_argument("assignment", help="notebook id, e.g. 01_tokenizer_gpt2")
    s.add_argument("notebook", help="the submitted .ipynb")
    s.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    s.add_argument("--feedback", metavar="DIR", help="write the student's HTML feedback into DIR")
    s.add_argument("--keep", metavar="DIR", help="keep the temporary nbgrader course in DIR")
    add_grading_options(s)
    s.set_defaults(fn=cmd_grade)

    s = sub.add_parser("grade-all", help="autograde a class: SUBMISSIONS/<student>/<id>/<id>.ipynb")
    s.add_argument("submissions")
    s.add_argument("--out", default=str(ROOT / "autograde_output"),
                   help="grades.csv, results.json, feedback/, report.csv and report.png go here")
    s.add_argument("--workers", type=int, default=1, help="grading processes (each with its own gradebook)")
    add_grading_options(s)
    s.set_defaults(fn=cmd_grade_all)

    s = sub.add_parser("demo", help="run the source notebooks end to end (the instructor demo)")
    s.add_argument("assignments", nargs="*", help="notebook ids (default: all)")
    s.add_argument("--out", default=str(ROOT / "demo_output"), help="executed notebooks + plots/")
    s.add_argument("--tiny", action="store_true", help="run the tiny (grading) configuration")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("student-env", help="hide nbgrader's instructor tools in the students' environment")
    s.add_argument("--apply", action="store_true", help="run the commands in this Python's environment (not the course's .venv)")
    s.add_argument("--exchange", metavar="DIR", help="the exchange folder (default: $RLHF_EXCHANGE, else <repo>/exchange)")
    s.set_defaults(fn=cmd_student_env)

    s = sub.add_parser("to-text", help="print a notebook in the text authoring view")
    s.add_argument("notebook")
    s.set_defaults(fn=cmd_to_text)
    s = sub.add_parser("from-text", help="write a notebook from the text authoring view")
    s.add_argument("text")
    s.add_argument("notebook")
    s.set_defaults(fn=cmd_from_text)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except course.GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
