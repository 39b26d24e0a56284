"""Shared test set-up: the repository root importable, headless plots, fresh exports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COURSE_NO_PROGRESS", "1")
# Two xdist workers on two cores: one BLAS thread each (and in the kernels they start), or tiny
# matrix products stall behind oversubscribed thread pools (seen: 3 us -> 31 ms).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared core
# Kernels started by nbclient/nbgrader run `python` from PATH: make it this interpreter.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from helpers.export import refresh  # noqa: E402

refresh(ROOT)  # minirlhf/ is generated, never committed: bring it up to date once per run


def pytest_sessionstart(session):
    """Build the tiny models that notebooks 02+ load while grading, once, before any worker starts.

    A notebook cell under nbgrader has 30 s; training even the tiny default and SFT models from an
    empty cache can take longer on a loaded 2-core machine. Releases ship these prebuilt; the test
    run builds them here (in the controller process: xdist workers find them in the cache).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from helpers import artifacts

    for name in ("default_model", "sft_model", "comparisons", "reward_model"):
        if name in artifacts.PROVIDERS:
            artifacts.get(name, tiny=True)
