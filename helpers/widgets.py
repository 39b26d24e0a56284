"""Slider demos that degrade to a static figure.

``interact(fn, temperature=(0.1, 2.0, 0.1, 1.0))`` always draws ``fn(temperature=1.0)`` once
and hands it to :func:`helpers.plots.show` (saved under ``$COURSE_PLOT_DIR``, displayed,
closed), so graded runs, exported HTML and front ends without widget support all get the
picture. In a live Jupyter kernel with ipywidgets (and not under grading) sliders are added
below it; releasing a slider redraws that same figure in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers import plots
from helpers.runtime import is_grading


class Slider(NamedTuple):
    kind: str  # "int" or "float"
    min: float
    max: float
    step: float
    default: float


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_slider(name: str, spec: Any) -> Slider:
    """Validate ``(min, max, step, default)``; int slider if all four are ints, float otherwise."""
    if not isinstance(spec, (tuple, list)) or len(spec) != 4 or not all(_is_number(v) for v in spec):
        raise ValueError(
            f"slider {name!r} must be a tuple (min, max, step, default) of 4 finite numbers, got {spec!r}"
        )
    lo, hi, step, default = spec
    if not lo < hi:
        raise ValueError(f"slider {name!r}: min ({lo}) must be < max ({hi})")
    if not step > 0:
        raise ValueError(f"slider {name!r}: step must be > 0, got {step}")
    if not lo <= default <= hi:
        raise ValueError(f"slider {name!r}: default {default} is outside [{lo}, {hi}]")
    if all(isinstance(v, int) for v in spec):
        return Slider("int", lo, hi, step, default)
    return Slider("float", float(lo), float(hi), float(step), float(default))


def _as_figure(result: Any) -> Figure | None:
    if isinstance(result, Axes):
        return plots._root_figure(result)
    return result


def _draw(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Figure | None:
    """Call ``fn``; if it returns None but opened pyplot figures, take the last one.
    Other figures it opened are closed, so nothing leaks or gets shown twice."""
    before = set(plt.get_fignums())
    fig = _as_figure(fn(**kwargs))
    opened = [n for n in plt.get_fignums() if n not in before]
    if fig is None and opened:
        fig = plt.figure(opened[-1])
    for number in opened:
        if fig is None or getattr(fig, "number", None) != number:
            plt.close(number)
    return fig


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _slider_widget(ipywidgets: Any, name: str, s: Slider) -> Any:
    common = dict(min=s.min, max=s.max, step=s.step, value=s.default, description=name, continuous_update=False)
    if s.kind == "int":
        return ipywidgets.IntSlider(**common)
    decimals = max(1, -math.floor(math.log10(s.step)))
    return ipywidgets.FloatSlider(readout_format=f".{decimals}f", **common)


def interact(fn: Callable[..., Any], *, name: str | None = None, **sliders: Any) -> None:
    """Draw ``fn(**defaults)`` (saved as ``name``, default ``fn.__name__``) and, live, add sliders.

    Each keyword is a slider ``(min, max, step, default)``. ``fn`` returns a matplotlib
    Figure (or Axes, or None after drawing with pyplot). Sliders only redraw when released.
    """
    if not callable(fn):
        raise TypeError(f"interact expects a function, got {type(fn).__name__}")
    specs = {key: parse_slider(key, spec) for key, spec in sliders.items()}
    defaults = {key: s.default for key, s in specs.items()}
    fig_name = name or getattr(fn, "__name__", "interact")
    fig = _draw(fn, defaults)

    ipywidgets = _ipywidgets() if specs and not is_grading() and plots._in_ipython_kernel() else None
    if ipywidgets is None:
        plots.show(fig, fig_name)
        return

    # Live: show the default figure under a display id, so each redraw replaces it in place.
    handle = None
    if fig is not None:
        try:
            plots.save(fig, fig_name)
            handle = plots._display(fig, display_id=True)
        finally:
            plt.close(fig)

    first_call = True

    def redraw(**values: Any) -> None:
        nonlocal first_call, handle
        if first_call:  # ipywidgets.interactive calls once at construction: already drawn above
            first_call = False
            return
        new = _draw(fn, values)
        if new is None:
            return
        try:
            if handle is None:
                handle = plots._display(new, display_id=True)
            else:
                handle.update(new)
        finally:
            plt.close(new)

    controls = {key: _slider_widget(ipywidgets, key, s) for key, s in specs.items()}
    plots._display(ipywidgets.interactive(redraw, **controls))


__all__ = ["Slider", "interact", "parse_slider"]
