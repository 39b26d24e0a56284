"""What a graded notebook may use (:class:`Limits`), and the names of the grader's own outcomes.

nbgrader runs a submission in a plain kernel, cell by cell: an infinite loop costs the cell timeout
every time the function is called, a crash (``os._exit``, a segfault) ends the notebook and loses
every later test, there is no memory limit, and any text on stderr zeroes a test cell.
:class:`autograder.kernel.GradingExecute` replaces nbgrader's ``Execute`` step:

* the kernel starts through ``autograder/sandbox.py`` (limits, Landlock, guard: see that module);
* each cell gets ``cell_timeout`` seconds, the whole notebook ``time_limit``; past the cell timeout the
  kernel is restarted (an interrupt does not stop every loop) and the graded function that hung is
  replaced by one that raises at once; past the notebook's limit every remaining cell is *not run*;
* when the kernel dies, the cell gets an error saying how (exit code, signal), a fresh kernel replays
  the earlier non-test cells, the function that crashed is replaced as above, and grading goes on
  with the next cell (at most ``max_restarts`` times);
* around each test cell the sandbox's guard restores the test tools (``torch.allclose``,
  ``helpers.checks`` ...) and reports whether the cell's run changed them (the cell then fails);
* stderr in a test cell is kept, as stdout, so a warning does not zero a correct answer.

Every outcome is an ordinary ``error`` output (``ename`` one of :data:`GRADER_ERRORS`, ``evalue`` one
sentence for the student), so nbgrader scores the cell 0 and the feedback shows why.

This module imports nothing heavy: the CLI builds its options from :class:`Limits`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

CELL_TIMEOUT = "CellTimeLimitExceeded"
NOTEBOOK_TIMEOUT = "NotebookTimeLimitExceeded"
CRASH = "KernelCrashed"
MEMORY = "MemoryLimitExceeded"
TAMPERING = "TestToolsModified"
NOT_RUN = "NotRun"
GRADER_ERRORS = (CELL_TIMEOUT, NOTEBOOK_TIMEOUT, CRASH, MEMORY, TAMPERING, NOT_RUN)


def parse_size(text: str | int | float) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``4294967296`` -> bytes (0 = no limit)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


@dataclass
class Limits:
    """What one notebook may use while it is graded (``grade``/``grade-all`` options of the same names)."""

    time_limit: float = 600.0
    """wall-clock seconds for the whole notebook (kernel start, every cell, restarts)"""
    cell_timeout: int = 30
    """seconds per cell (nbgrader's default, which every notebook of the course is built to hold)"""
    memory_limit: int = 4 << 30
    """bytes of memory per kernel (``RLIMIT_DATA``; 0 = none)"""
    output_limit: int = 200_000
    """characters a cell may print per stream; the rest is dropped"""
    max_restarts: int = 8
    """kernel restarts after a crash or a timeout before the rest of the notebook is given up"""
    sandbox: bool = True
    """Landlock and the test-tool guard (off: limits only)"""

    def nbgrader_config(self, report_dir: Path) -> dict:
        """``c.GradingExecute.*`` settings."""
        return {
            "timeout": int(self.cell_timeout),
            "notebook_time_limit": float(self.time_limit),
            "memory_limit": int(self.memory_limit),
            "output_limit": int(self.output_limit),
            "max_restarts": int(self.max_restarts),
            "sandbox": bool(self.sandbox),
            "report_dir": str(report_dir),
        }

    def as_dict(self) -> dict:
        return asdict(self)


