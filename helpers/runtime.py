"""Run-time switches shared by the notebooks: grading mode, seeding, device, progress bars.

Demo and training cells call :func:`is_grading` (or :func:`tiny_if_grading`) so that the
autograder, which runs every cell of a notebook, only pays for a tiny configuration. Every
notebook's setup cell calls :func:`configure_for_grading`, so that grading holds nbgrader's 30 s
per cell wherever it runs (the formgrader, a plain ``nbgrader autograde``), with no environment
variable set but nbgrader's own.

Environment variables read here:

``NBGRADER_EXECUTION``  set (non-empty) by nbgrader while it executes a notebook.
``COURSE_DEVICE``       forces :func:`get_device` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``).
``COURSE_NO_PROGRESS``  any value other than empty/``0``/``false``/``no`` turns progress bars off.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_FALSE_WORDS = {"", "0", "false", "no", "off"}


def is_grading() -> bool:
    """True while nbgrader executes the notebook (env ``NBGRADER_EXECUTION`` is non-empty)."""
    return bool(os.environ.get("NBGRADER_EXECUTION", ""))


def tiny_if_grading(full: T, tiny: T) -> T:
    """Return ``tiny`` under grading and ``full`` otherwise, e.g. ``steps = tiny_if_grading(500, 5)``."""
    return tiny if is_grading() else full


GRADING_THREADS = 1


def configure_for_grading(threads: int = GRADING_THREADS) -> bool:
    """Set the process up for nbgrader; call it once, in a notebook's setup cell. Returns :func:`is_grading`.

    ``GRADING = runtime.configure_for_grading()``. Under grading (``NBGRADER_EXECUTION`` set):

    * torch computes on ``threads`` CPU threads (``torch.set_num_threads``). nbgrader sets no thread
      count, and torch's default (one thread per core) makes the tiny grading configurations slower,
      not faster: on a machine shared by several kernels the thread pools oversubscribe the cores
      (measured under plain ``nbgrader autograde`` on a busy 2-core machine: notebook 02's tiny SFT
      run took 13-22 s with torch's default, 4-5 s with one thread).
    * models and data sets are never built: :mod:`helpers.artifacts` raises at once when an artifact
      is neither shipped beside the notebook nor cached, naming the command that ships it (building
      one would overrun nbgrader's 30 s cell timeout).

    Outside grading it changes nothing.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    grading = is_grading()
    if grading:
        from helpers import artifacts

        torch.set_num_threads(threads)
        artifacts.allow_builds(False)
    return grading


class NotWrittenYet(Exception):
    """A demo cell needs a graded function that is still a stub; Jupyter shows it as one line, no traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: these lines replace the traceback
        return [f"{type(self).__name__}: {self}"]


def _is_stub(obj: Any) -> bool:
    """True if ``obj`` (a function, or a class whose methods are checked) is a released stub.

    nbgrader's stub body is ``raise NotImplementedError()``: the function's code references
    ``NotImplementedError`` and, apart from the docstring, nothing else.
    """
    import dis

    if isinstance(obj, type):
        return any(_is_stub(getattr(member, "__func__", member)) for member in vars(obj).values())
    code = getattr(obj, "__code__", None)
    if code is None or code.co_names != ("NotImplementedError",):
        return False
    ops = {ins.opname for ins in dis.get_instructions(code)} - {"RESUME", "NOP", "CACHE", "PUSH_NULL", "PRECALL"}
    return ops <= {"LOAD_GLOBAL", "CALL", "RAISE_VARARGS"}  # `raise NotImplementedError()` and nothing else


def needs(*names: str) -> None:
    """Stop a demo cell in one line while a graded function (or class) it uses is not written yet.

    ``runtime.needs("sample_k_responses", "dedupe_responses")`` at the top of a demo cell raises
    :class:`NotWrittenYet` ("write `sample_k_responses` first ...") if a name is undefined in the
    notebook or still holds the released stub, instead of a traceback and then a ``NameError`` in every
    cell below. Names are looked up in the calling notebook's globals.
    """
    import sys

    namespace = sys._getframe(1).f_globals
    undefined = [n for n in names if n not in namespace]
    if undefined:
        raise NotWrittenYet(f"run the cell that defines {', '.join(f'`{n}`' for n in undefined)} first, then this one")
    stubs = [n for n in names if _is_stub(namespace[n])]
    if stubs:
        raise NotWrittenYet(f"write {', '.join(f'`{n}`' for n in stubs)} first: this cell runs once "
                            f"{'it passes its' if len(stubs) == 1 else 'they pass their'} test cell")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, torch (CPU and all GPUs) and numpy (if installed).

    Returns a fresh CPU ``torch.Generator`` seeded with ``seed``; pass it explicitly
    (``torch.randn(..., generator=g)``) where a result must not depend on what else drew
    random numbers before.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:  # numpy is optional here
        pass
    else:
        np.random.seed(seed % 2**32)  # numpy's legacy seed must fit in 32 bits
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _cuda_device(name: str, source: str) -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{source} asks for device {name!r}, but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False). Use 'cpu' or 'auto'."
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"{source} asks for device {name!r}, but only {torch.cuda.device_count()} CUDA "
            "device(s) are visible."
        )
    return device


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to train on.

    Default (``prefer=None`` or ``"auto"``): ``cuda`` if available, else ``cpu``. ``prefer`` may
    name ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. The environment variable
    ``COURSE_DEVICE`` (same values) overrides ``prefer``. Unknown names raise ``ValueError``;
    a named accelerator that is not available raises ``RuntimeError``.
    """
    env = os.environ.get("COURSE_DEVICE", "").strip()
    if env:
        choice, source = env, "COURSE_DEVICE"
    elif prefer is not None:
        choice, source = str(prefer), "get_device(prefer=...)"
    else:
        choice, source = "auto", "default"
    name = choice.strip().lower()

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return _cuda_device(name, source)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError(f"{source} asks for device 'mps', but MPS is not available on this machine.")
        return torch.device("mps")
    raise ValueError(
        f"unknown device {choice!r} (from {source}); expected one of 'auto', 'cpu', 'cuda', "
        "'cuda:N', 'mps'"
    )


def progress_disabled() -> bool:
    """True when progress bars are off: under grading or when ``COURSE_NO_PROGRESS`` is set."""
    flag = os.environ.get("COURSE_NO_PROGRESS", "").strip().lower()
    return is_grading() or flag not in _FALSE_WORDS


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` progress bar (widget in Jupyter, text elsewhere).

    Disabled (silent, zero output) under grading and when ``COURSE_NO_PROGRESS`` is set,
    because tqdm writes to stderr and a test cell that writes to stderr scores 0.
    Keyword arguments go to tqdm (``total=``, ``desc=``, ``unit=`` ...); ``disable=True``
    is honoured as well. Without an iterable, use it as a manual bar (``bar.update(n)``).
    """
    from tqdm.auto import tqdm  # imported lazily: picks the notebook or console flavour

    kwargs["disable"] = bool(kwargs.get("disable", False)) or progress_disabled()
    return tqdm(iterable, **kwargs)


__all__ = [
    "GRADING_THREADS",
    "configure_for_grading",
    "get_device",
    "is_grading",
    "progress",
    "progress_disabled",
    "seed_everything",
    "tiny_if_grading",
]
