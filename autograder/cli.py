"""``python -m autograder COMMAND``: the course's instructor tools.

    export                       write minirlhf/ (reference code) from the source notebooks
    release [--out DIR]          nbgrader generate_assignment for every notebook -> DIR/<id>/
    grade ASSIGNMENT NB [--json] [--feedback DIR]
                                 autograde one submitted notebook in a temporary course
    grade-all SUBMISSIONS [--out DIR]
                                 autograde a class (SUBMISSIONS/<student>/<id>/<id>.ipynb),
                                 with grades.csv and HTML feedback per student
    demo [--out DIR] [IDS...]    execute the source notebooks end to end, plots saved
    to-text NB / from-text TXT NB   the plain-text authoring view of a notebook
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
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


def cmd_release(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    ids = args.assignments or course.notebook_ids()
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
            print(f"[release] {nb_id} -> {dest}")
    print(f"Release written to {out}: give each student folder <id>/ as it is "
          "(notebook, helpers/, minirlhf/, artifacts/).")
    return 0


def print_score(score: course.NotebookScore) -> None:
    print(f"{score.student} / {score.assignment} / {score.notebook}.ipynb")
    width = max((len(c.grade_id) for c in score.cells), default=10)
    for c in score.cells:
        mark = "ok  " if c.score == c.max_score else ("part" if c.score > 0 else "FAIL")
        print(f"  {mark} {c.grade_id:<{width}}  {c.score:g} / {c.max_score:g}")
    print(f"  total: {score.score:g} / {score.max_score:g}")


def cmd_grade(args: argparse.Namespace) -> int:
    submission = Path(args.notebook).resolve()
    if not submission.is_file():
        raise SystemExit(f"submitted notebook not found: {submission}")
    course.check_assignment(args.assignment)
    try:
        return grade_one(args, submission)
    except course.GradingError as exc:
        if not args.json:
            raise
        print(f"error: {exc}", file=sys.stderr)
        # Outside checkers parse the last line: say what happened instead of printing nothing.
        print(json.dumps({"assignment": args.assignment, "score": 0.0, "max_score": None, "error": str(exc)[-2000:]}))
        return 1


def grade_one(args: argparse.Namespace, submission: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="rlhf-grade-") as tmp:
        crs = course.build_course(Path(tmp), [args.assignment])
        course.generate_assignment(crs, args.assignment)
        course.submit(crs, args.assignment, course.STUDENT, submission)
        course.autograde(crs, args.assignment, course.STUDENT)
        (score,) = course.read_scores(crs, args.assignment, course.STUDENT)
        result = score.as_dict()
        if args.feedback:
            fb = course.generate_feedback(crs, args.assignment) / course.STUDENT / args.assignment
            dest = Path(args.feedback).resolve()
            dest.mkdir(parents=True, exist_ok=True)
            for html in fb.glob("*.html"):
                shutil.copy(html, dest / html.name)
            result["feedback"] = str(dest / f"{args.assignment}.html")
        if args.keep:
            kept = Path(args.keep).resolve()
            if kept.exists():
                shutil.rmtree(kept)
            shutil.copytree(crs, kept)
    print_score(score)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_grade_all(args: argparse.Namespace) -> int:
    subs = Path(args.submissions).resolve()
    found = sorted(subs.glob("*/*/*.ipynb"))
    found = [p for p in found if p.stem == p.parent.name]
    if not found:
        raise SystemExit(f"no submissions found: expected {subs}/<student>/<assignment>/<assignment>.ipynb")
    assignments = sorted({p.parent.name for p in found})
    out = Path(args.out).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlhf-grade-all-") as tmp:
        crs = course.build_course(Path(tmp), assignments)
        for a in assignments:
            course.generate_assignment(crs, a)
            for p in (p for p in found if p.parent.name == a):
                course.submit(crs, a, p.parent.parent.name, p)
            print(f"[grade-all] autograding {a} ...", flush=True)
            course.autograde(crs, a)
            course.generate_feedback(crs, a)
            for student in sorted({p.parent.parent.name for p in found if p.parent.name == a}):
                for score in course.read_scores(crs, a, student):
                    print_score(score)
                    rows.append(score)
        if (crs / "feedback").exists():
            shutil.copytree(crs / "feedback", out / "feedback", dirs_exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score"])
        for s in rows:
            w.writerow([s.student, s.assignment, s.score, s.max_score])
    print(f"grades: {out / 'grades.csv'}; feedback: {out / 'feedback'}/<student>/<assignment>/")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from autograder.demo import run_demo

    return run_demo(Path(args.out).resolve(), args.assignments or course.notebook_ids(), tiny=args.tiny)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("export", help="write minirlhf/ from the source notebooks")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("release", help="generate the student release of every notebook")
    s.add_argument("assignments", nargs="*", help="notebook ids (default: all)")
    s.add_argument("--out", default=str(ROOT / "release"), help="release folder (default: release/)")
    s.add_argument("--no-artifacts", action="store_true",
                   help="ship only the tiny grading models, not the full-size ones students train with")
    s.set_defaults(fn=cmd_release)

    s = sub.add_parser("grade", help="autograde one submitted notebook")
    s.add_argument("assignment", help="notebook id, e.g. 01_tokenizer_gpt2")
    s.add_argument("notebook", help="the submitted .ipynb")
    s.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    s.add_argument("--feedback", metavar="DIR", help="write nbgrader's HTML feedback into DIR")
    s.add_argument("--keep", metavar="DIR", help="keep the temporary nbgrader course in DIR")
    s.set_defaults(fn=cmd_grade)

    s = sub.add_parser("grade-all", help="autograde a class: SUBMISSIONS/<student>/<id>/<id>.ipynb")
    s.add_argument("submissions")
    s.add_argument("--out", default=str(ROOT / "autograde_output"), help="grades.csv + feedback/ go here")
    s.set_defaults(fn=cmd_grade_all)

    s = sub.add_parser("demo", help="run the source notebooks end to end (the instructor demo)")
    s.add_argument("assignments", nargs="*", help="notebook ids (default: all)")
    s.add_argument("--out", default=str(ROOT / "demo_output"), help="executed notebooks + plots/")
    s.add_argument("--tiny", action="store_true", help="run the tiny (grading) configuration")
    s.set_defaults(fn=cmd_demo)

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
