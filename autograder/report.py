"""The instructor's report after ``grade-all``: per graded function, who failed it and why.

``report.csv``: assignment, function, students, failed, share_failed, most common failure message and
how many students got it. ``report.png``: the share failing per function, one bar each, worst first:
what to re-teach next lecture. A function counts as failed for a student when any of its test cells
lost points; messages are counted with their numbers blanked, so "trial 3" and "trial 5" are one message.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _key(message: str) -> str:
    return _NUMBER.sub("#", message)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (assignment, graded function), worst first."""
    per: dict[tuple[str, str], dict] = {}
    for r in results:
        by_function: dict[str, list[dict]] = {}
        for c in r.get("cells", []):
            by_function.setdefault(c.get("function") or c["grade_id"], []).append(c)
        for function, cells in by_function.items():
            row = per.setdefault((r["assignment"], function), {"students": 0, "failed": 0, "messages": Counter(),
                                                                "examples": {}})
            row["students"] += 1
            lost = [c for c in cells if c["score"] < c["max_score"]]
            if lost:
                row["failed"] += 1
                message = lost[0].get("message") or "lost points"
                row["messages"][_key(message)] += 1
                row["examples"].setdefault(_key(message), message)
    rows = []
    for (assignment, function), row in per.items():
        common = row["messages"].most_common(1)
        rows.append({
            "assignment": assignment,
            "function": function,
            "students": row["students"],
            "failed": row["failed"],
            "share_failed": round(row["failed"] / row["students"], 3) if row["students"] else 0.0,
            "most_common_failure": row["examples"][common[0][0]] if common else "",
            "students_with_it": common[0][1] if common else 0,
        })
    rows.sort(key=lambda r: (-r["share_failed"], r["assignment"], r["function"]))
    return rows


def write_report(out: Path, results: list[dict]) -> tuple[Path, Path]:
    rows = summarize(results)
    csv_path, png_path = out / "report.csv", out / "report.png"
    with open(csv_path, "w", newline="") as f:
        fields = ["assignment", "function", "students", "failed", "share_failed", "most_common_failure",
                  "students_with_it"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({r["assignment"] for r in rows}) > 1
    labels = [f"{r['assignment']}: {r['function']}" if several else r["function"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.35 * max(len(rows), 1)))
    ax.barh(range(len(rows)), [100 * r["share_failed"] for r in rows], color="#c0504d")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    n = max((r["students"] for r in rows), default=0)
    ax.set(xlabel="students who lost points on it (%)", title=f"What to re-teach: graded functions, {n} students")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path
