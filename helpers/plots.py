"""Course plots: one style, smoothed training curves, heat maps, histograms, save-and-show.

Works headless: this module never selects a matplotlib backend (Jupyter picks its inline
backend, scripts and tests use ``MPLBACKEND=Agg`` or matplotlib's own headless fallback).

Every plotting function returns a matplotlib ``Figure``; hand it to :func:`show`, which
saves it as ``$COURSE_PLOT_DIR/<name>.png`` when that variable is set (the notebook
execution harness sets it per notebook), displays it in a Jupyter kernel and closes it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Okabe-Ito: distinguishable with the common forms of colour blindness.
COURSE_COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]

COURSE_STYLE: dict[str, Any] = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=COURSE_COLORS),
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
}

RAW_ALPHA = 0.25  # the unsmoothed curve behind a smoothed one


def use_course_style() -> None:
    """Apply the course style to matplotlib's global rcParams (for hand-made plots).

    The functions in this module use the style on their own, without changing globals.
    """
    plt.rcParams.update(COURSE_STYLE)


@contextlib.contextmanager
def _styled() -> Iterator[None]:
    with plt.rc_context(COURSE_STYLE):
        yield


def _as_float_list(values: Any, what: str) -> list[float]:
    """1-D sequence / tensor / array of numbers -> list of Python floats."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    if hasattr(values, "detach"):  # torch.Tensor (maybe on GPU, maybe requiring grad)
        values = values.detach().cpu()
    if hasattr(values, "ndim") and hasattr(values, "tolist"):  # tensor or numpy array
        if values.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(values.shape)}")
        values = values.tolist()
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a 1-D sequence of numbers ({err})") from None


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    r"""Debiased exponential moving average, as TensorBoard's smoothing slider.

    $m_t = w\,m_{t-1} + (1-w)\,x_t$ with $m_0 = 0$, reported as $m_t / (1 - w^t)$ so that the
    first points are not dragged towards 0. Non-finite values (nan, inf) are passed through
    unchanged and do not enter the average. ``weight=0`` returns the input as floats.
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a float in [0, 1), got {type(weight).__name__}")
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    xs = _as_float_list(values, "values")
    if weight == 0:
        return xs
    out: list[float] = []
    avg, n = 0.0, 0
    for x in xs:
        if not math.isfinite(x):
            out.append(x)
            continue
        n += 1
        avg = weight * avg + (1.0 - weight) * x
        out.append(avg / (1.0 - weight**n))
    return out


_ema = smooth  # plot_curves has a parameter called `smooth`


def _root_figure(ax: Axes) -> Figure:
    try:
        return ax.get_figure(root=True)  # matplotlib >= 3.10: skip SubFigures
    except TypeError:
        return ax.figure


def _new_axes(ax: Axes | None, **subplot_kw: Any) -> tuple[Figure, Axes]:
    if ax is not None:
        return _root_figure(ax), ax
    fig, ax = plt.subplots(**subplot_kw)
    return fig, ax


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    smooth: float = 0.0,
    ax: Axes | None = None,
) -> Figure:
    """Plot named curves against their index (step 0, 1, ...).

    With ``smooth > 0`` each curve is drawn twice in the same colour: raw and faint, then
    smoothed (:func:`smooth` with that weight) and solid; the legend names the smoothed one.
    Returns the figure (of ``ax`` if given).
    """
    if not isinstance(curves, Mapping):
        raise TypeError(f"curves must be a dict name -> values, got {type(curves).__name__}")
    series = {str(name): _as_float_list(vals, f"curves[{name!r}]") for name, vals in curves.items()}
    weight = float(smooth)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    with _styled():
        fig, ax = _new_axes(ax)
        for name, ys in series.items():
            steps = range(len(ys))
            if weight > 0:
                (raw,) = ax.plot(steps, ys, alpha=RAW_ALPHA, linewidth=1.0)
                ax.plot(steps, _ema(ys, weight), color=raw.get_color(), label=name)
            else:
                ax.plot(steps, ys, label=name)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if series:  # a legend without labelled artists warns on stderr
            ax.legend()
    return fig


def _as_matrix(matrix: Any) -> Any:
    import numpy as np  # a matplotlib dependency

    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().float().numpy()
    arr = np.asarray(matrix, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"heatmap expects a 2-D matrix, got shape {arr.shape}")
    return arr


def heatmap(
    matrix: Any,
    *,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str = "",
    cmap: str = "viridis",
    ax: Axes | None = None,
    annotate: bool = False,
) -> Figure:
    """Show a 2-D matrix (tensor, array or nested lists) as an image with a colour bar.

    Row ``i`` is drawn top to bottom (like a printed matrix, e.g. attention query ``i`` over
    keys). ``xlabels``/``ylabels`` label the columns/rows (lengths must match).
    ``annotate=True`` writes each value in its cell (for small matrices).
    """
    arr = _as_matrix(matrix)
    n_rows, n_cols = arr.shape
    if xlabels is not None and len(xlabels) != n_cols:
        raise ValueError(f"xlabels has {len(xlabels)} entries but the matrix has {n_cols} columns")
    if ylabels is not None and len(ylabels) != n_rows:
        raise ValueError(f"ylabels has {len(ylabels)} entries but the matrix has {n_rows} rows")
    with _styled():
        fig, ax = _new_axes(ax)
        image = ax.imshow(arr, cmap=cmap, aspect="auto", interpolation="nearest")
        ax.grid(False)
        fig.colorbar(image, ax=ax)
        if xlabels is not None:
            ax.set_xticks(range(n_cols), [str(s) for s in xlabels], rotation=90)
        if ylabels is not None:
            ax.set_yticks(range(n_rows), [str(s) for s in ylabels])
        if annotate:
            mid = (float(arr.min()) + float(arr.max())) / 2
            for i in range(n_rows):
                for j in range(n_cols):
                    color = "black" if arr[i, j] > mid else "white"
                    ax.text(j, i, f"{arr[i, j]:.2g}", ha="center", va="center", color=color, fontsize=8)
        ax.set_title(title)
    return fig


def histogram(
    values: Any,
    *,
    bins: int = 40,
    title: str = "",
    xlabel: str = "",
    ax: Axes | None = None,
) -> Figure:
    """Histogram of a 1-D sequence / tensor, or of several overlaid ones given as a dict
    ``{label: values}`` (e.g. rewards of chosen vs rejected answers; shared bin edges).
    """
    import numpy as np

    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if isinstance(values, Mapping):
        series = {str(k): _as_float_list(v, f"values[{k!r}]") for k, v in values.items()}
    else:
        series = {"": _as_float_list(values, "values")}
    finite = [x for ys in series.values() for x in ys if math.isfinite(x)]
    edges = np.histogram_bin_edges(finite, bins=bins) if finite else bins
    overlaid = len(series) > 1
    with _styled():
        fig, ax = _new_axes(ax)
        for label, ys in series.items():
            ys = [y for y in ys if math.isfinite(y)]
            ax.hist(ys, bins=edges, alpha=0.55 if overlaid else 0.9, label=label or None)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        if any(series):
            ax.legend()
    return fig


def _sanitize(name: str) -> str:
    stem = str(name)
    if stem.lower().endswith(".png"):
        stem = stem[:-4]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".")
    return stem or "figure"


def plot_path(name: str) -> Path | None:
    """Where :func:`show` saves ``name``: ``$COURSE_PLOT_DIR/<sanitized name>.png`` or None."""
    directory = os.environ.get("COURSE_PLOT_DIR", "")
    if not directory:
        return None
    return Path(directory).expanduser() / f"{_sanitize(name)}.png"


def _in_ipython_kernel() -> bool:
    """True inside a Jupyter (ipykernel) kernel; False in scripts, pytest and terminal IPython."""
    ipython = sys.modules.get("IPython")  # never imported -> certainly not in a kernel
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _display(obj: Any, **kwargs: Any) -> Any:
    from IPython.display import display

    return display(obj, **kwargs)


def save(fig: Figure, name: str) -> Path | None:
    """Save ``fig`` to :func:`plot_path` (``name``) if ``COURSE_PLOT_DIR`` is set; return the path."""
    path = plot_path(name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _styled():
            fig.savefig(path, format="png")
    return path


def show(fig: Figure | None, name: str) -> None:
    """Save (to ``$COURSE_PLOT_DIR/<name>.png`` if set), display (in a Jupyter kernel), close.

    ``name`` is sanitized to ``[A-Za-z0-9_.-]``. ``fig=None`` does nothing.
    """
    if fig is None:
        return
    if isinstance(fig, Axes):
        fig = _root_figure(fig)
    if not isinstance(fig, Figure):
        raise TypeError(f"show expects a matplotlib Figure, got {type(fig).__name__}")
    try:
        save(fig, name)
        if _in_ipython_kernel():
            _display(fig)
    finally:
        plt.close(fig)


__all__ = [
    "COURSE_STYLE",
    "heatmap",
    "histogram",
    "plot_curves",
    "plot_path",
    "save",
    "show",
    "smooth",
    "use_course_style",
]
