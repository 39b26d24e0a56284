"""helpers.runtime, helpers.plots and helpers.widgets (headless)."""

from __future__ import annotations

import math
import os
import random

os.environ.setdefault("MPLBACKEND", "Agg")  # before pyplot is imported anywhere

import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from helpers import plots, runtime, widgets  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("NBGRADER_EXECUTION", "COURSE_DEVICE", "COURSE_PLOT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COURSE_NO_PROGRESS", "1")
    yield
    plt.close("all")


# ---------------------------------------------------------------- runtime


def test_is_grading_and_tiny(monkeypatch):
    assert runtime.is_grading() is False
    assert runtime.tiny_if_grading(500, 5) == 500
    monkeypatch.setenv("NBGRADER_EXECUTION", "")
    assert runtime.is_grading() is False
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert runtime.is_grading() is True
    assert runtime.tiny_if_grading(500, 5) == 5
    assert runtime.tiny_if_grading({"steps": 500}, {"steps": 5}) == {"steps": 5}


def test_seed_everything_reproducible():
    def draw(seed):
        g = runtime.seed_everything(seed)
        assert isinstance(g, torch.Generator)
        return (random.random(), torch.randn(4).tolist(), torch.randn(3, generator=g).tolist())

    first, again, other = draw(123), draw(123), draw(124)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1] and first[2] != other[2]
    # The returned generator starts from the seed, whatever happened to the global one.
    g = runtime.seed_everything(7)
    torch.randn(100)
    assert torch.equal(torch.randn(5, generator=g), torch.randn(5, generator=torch.Generator().manual_seed(7)))


def test_seed_everything_seeds_numpy_if_present():
    np = pytest.importorskip("numpy")
    runtime.seed_everything(5)
    a = np.random.rand(3)
    runtime.seed_everything(5)
    assert (np.random.rand(3) == a).all()


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_seed_everything_rejects_non_int(bad):
    with pytest.raises(TypeError):
        runtime.seed_everything(bad)


def test_get_device(monkeypatch):
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.get_device().type == expected_auto
    assert runtime.get_device("auto").type == expected_auto
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="tpu"):
        runtime.get_device("tpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.get_device("cuda") == torch.device("cpu")  # the environment wins
    monkeypatch.setenv("COURSE_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="COURSE_DEVICE"):
        runtime.get_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_get_device_cuda_unavailable_is_explained():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.get_device("cuda")


def test_progress_silent_under_grading(monkeypatch, capfd):
    monkeypatch.delenv("COURSE_NO_PROGRESS")
    # Control: a normal bar does write to stderr (so the silent checks below can fail).
    assert list(runtime.progress(range(20), desc="visible")) == list(range(20))
    assert "visible" in capfd.readouterr().err

    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert list(runtime.progress(range(20), desc="graded")) == list(range(20))
    with runtime.progress(total=10, desc="manual") as bar:
        bar.update(10)
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


@pytest.mark.parametrize("value, silent", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_progress_env_switch(monkeypatch, capfd, value, silent):
    monkeypatch.setenv("COURSE_NO_PROGRESS", value)
    assert sum(runtime.progress(range(5), desc="bar")) == 10
    err = capfd.readouterr().err
    assert (err == "") == silent, err


# ---------------------------------------------------------------- smooth


def ema_oracle(xs, w):
    """Debiased EMA as an explicitly normalised weighted average: sum w^(t-i) x_i / sum w^(t-i)."""
    out = []
    for t in range(len(xs)):
        weights = [w ** (t - i) for i in range(t + 1)]
        out.append(sum(wi * x for wi, x in zip(weights, xs[: t + 1])) / sum(weights))
    return out


@pytest.mark.parametrize("w", [0.3, 0.6, 0.9, 0.99])
def test_smooth_matches_oracle(w):
    gen = random.Random(0)
    xs = [gen.gauss(0, 1) + 0.05 * t for t in range(60)]
    got = plots.smooth(xs, weight=w)
    assert isinstance(got, list) and all(type(v) is float for v in got)
    assert got == pytest.approx(ema_oracle(xs, w), rel=1e-12, abs=1e-12)
    assert got[0] == pytest.approx(xs[0])  # debiased: the first point is not pulled to 0


def test_smooth_accepts_tensors_and_keeps_constants():
    xs = torch.full((30,), 2.5, dtype=torch.float64)
    assert plots.smooth(xs, 0.95) == pytest.approx([2.5] * 30, rel=1e-12)
    with pytest.raises(ValueError, match="1-D"):
        plots.smooth(torch.zeros(2, 3))


def test_smooth_weight_zero_is_identity():
    xs = [3, 1.5, -2, 7]
    got = plots.smooth(xs, weight=0)
    assert got == [3.0, 1.5, -2.0, 7.0] and all(type(v) is float for v in got)
    assert plots.smooth(torch.tensor([1, 2, 3]), weight=0.0) == [1.0, 2.0, 3.0]


def test_smooth_passes_nan_through():
    got = plots.smooth([1.0, float("nan"), 3.0], weight=0.5)
    assert got[0] == 1.0 and math.isnan(got[1])
    assert got[2] == pytest.approx(ema_oracle([1.0, 3.0], 0.5)[1])


@pytest.mark.parametrize("w", [-0.1, 1.0, 1.5, float("nan")])
def test_smooth_rejects_bad_weight(w):
    with pytest.raises(ValueError, match="weight"):
        plots.smooth([1.0, 2.0], weight=w)


def test_smooth_rejects_non_numeric_weight():
    with pytest.raises(TypeError):
        plots.smooth([1.0], weight="0.5")


# ---------------------------------------------------------------- figures


def test_plot_curves_smoothed():
    curves = {"loss": [4.0, 3.0, 3.5, 2.0, 1.0], "kl": torch.tensor([0.0, 0.1, 0.3, 0.2, 0.4])}
    fig = plots.plot_curves(curves, title="t", ylabel="y", smooth=0.6)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 4  # raw + smoothed per curve
    faint = [ln for ln in lines if (ln.get_alpha() or 1.0) < 1.0]
    solid = [ln for ln in lines if (ln.get_alpha() or 1.0) == 1.0]
    assert len(faint) == 2 and len(solid) == 2
    assert list(solid[0].get_ydata()) == pytest.approx(ema_oracle([4.0, 3.0, 3.5, 2.0, 1.0], 0.6))
    assert list(faint[0].get_ydata()) == [4.0, 3.0, 3.5, 2.0, 1.0]
    assert solid[0].get_color() == faint[0].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "kl"]
    assert ax.get_title() == "t" and ax.get_xlabel() == "step" and ax.get_ylabel() == "y"


def test_plot_curves_raw_and_on_given_axes():
    fig, axes = plt.subplots(1, 2)
    got = plots.plot_curves({"a": [1, 2, 3]}, ax=axes[1])
    assert got is fig
    assert len(axes[1].get_lines()) == 1 and len(axes[0].get_lines()) == 0
    assert list(axes[1].get_lines()[0].get_ydata()) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        plots.plot_curves({"a": [1.0]}, smooth=1.0)
    with pytest.raises(TypeError):
        plots.plot_curves([[1.0, 2.0]])


def test_plot_curves_empty_writes_no_warning(capfd):
    fig = plots.plot_curves({})
    assert isinstance(fig, Figure) and fig.axes[0].get_legend() is None
    assert capfd.readouterr().err == ""


def test_heatmap():
    m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    fig = plots.heatmap(m, xlabels=list("abcd"), ylabels=["x", "y", "z"], title="attn", annotate=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the image's axes and its colour bar
    (image,) = ax.get_images()
    assert image.get_array().tolist() == m.tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]
    assert len(ax.texts) == 12 and ax.get_title() == "attn"
    with pytest.raises(ValueError, match="xlabels"):
        plots.heatmap(m, xlabels=["a"])
    with pytest.raises(ValueError, match="2-D"):
        plots.heatmap([1.0, 2.0])


def test_histogram():
    values = torch.linspace(0, 1, 101)
    fig = plots.histogram(values, bins=10, title="r", xlabel="reward")
    ax = fig.axes[0]
    assert len(ax.patches) == 10
    assert sum(p.get_height() for p in ax.patches) == 101
    assert ax.get_xlabel() == "reward" and ax.get_legend() is None

    fig2 = plots.histogram({"chosen": [1.0, 2.0, 2.5], "rejected": [0.0, 0.5, float("nan")]}, bins=5)
    ax2 = fig2.axes[0]
    assert len(ax2.patches) == 10  # two series, shared edges
    assert sum(p.get_height() for p in ax2.patches) == 5  # nan dropped
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["chosen", "rejected"]
    with pytest.raises(ValueError):
        plots.histogram([1.0], bins=0)


def test_use_course_style_sets_rcparams():
    with matplotlib.rc_context():
        plots.use_course_style()
        assert tuple(plt.rcParams["figure.figsize"]) == (7.0, 4.0)
        assert plt.rcParams["axes.grid"] is True


# ---------------------------------------------------------------- show


def test_show_saves_png_and_closes(monkeypatch, tmp_path):
    out = tmp_path / "plots" / "06_gae"  # does not exist yet
    monkeypatch.setenv("COURSE_PLOT_DIR", str(out))
    fig = plots.plot_curves({"a": [1, 2, 3]})
    number = fig.number
    plots.show(fig, "returns vs/advantages")
    saved = out / "returns_vs_advantages.png"
    assert saved.read_bytes()[:8] == PNG_MAGIC
    assert number not in plt.get_fignums()
    assert sorted(p.name for p in out.iterdir()) == ["returns_vs_advantages.png"]


def test_show_name_cannot_escape_plot_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_PLOT_DIR", str(tmp_path / "p"))
    plots.show(plots.histogram([1.0, 2.0]), "../../evil.png")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].parent == tmp_path / "p"
    assert files[0].name == "_.._evil.png"


def test_show_without_plot_dir_only_closes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plots.plot_curves({"a": [1.0]})
    plots.show(fig, "x")
    assert fig.number not in plt.get_fignums()
    assert list(tmp_path.iterdir()) == []
    plots.show(None, "nothing")  # no-op
    with pytest.raises(TypeError):
        plots.show("not a figure", "x")


def test_not_in_kernel_here():
    assert plots._in_ipython_kernel() is False


# ---------------------------------------------------------------- widgets


def test_parse_slider():
    assert widgets.parse_slider("k", (1, 10, 1, 3)) == widgets.Slider("int", 1, 10, 1, 3)
    s = widgets.parse_slider("t", (0.1, 2, 0.1, 1))
    assert s.kind == "float" and type(s.default) is float and s.default == 1.0
    for bad in [(0, 1, 1), (1, 0, 1, 1), (0, 1, 0, 0), (0, 1, 1, 5), ("a", 1, 1, 1), (0, 1, 1, True)]:
        with pytest.raises(ValueError):
            widgets.parse_slider("x", bad)


def test_interact_static_outside_kernel(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("COURSE_PLOT_DIR", str(tmp_path))
    calls = []

    def draw(k, temperature):
        calls.append({"k": k, "temperature": temperature})
        return plots.plot_curves({"p": [temperature * i for i in range(k)]})

    before = plt.get_fignums()
    result = widgets.interact(draw, name="sampling", k=(1, 20, 1, 5), temperature=(0.1, 2.0, 0.1, 1))
    assert result is None
    assert calls == [{"k": 5, "temperature": 1.0}]
    assert type(calls[0]["k"]) is int and type(calls[0]["temperature"]) is float
    assert (tmp_path / "sampling.png").read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == before  # nothing left open
    assert capfd.readouterr().err == ""


def test_interact_uses_pyplot_figure_when_fn_returns_none(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_PLOT_DIR", str(tmp_path))

    def draw(n):
        plt.figure()
        plt.plot(range(n))

    widgets.interact(draw, n=(1, 5, 1, 3))
    assert (tmp_path / "draw.png").read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == []


def test_interact_live_redraws_in_place(monkeypatch, tmp_path):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("COURSE_PLOT_DIR", str(tmp_path))
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, **kwargs):
        shown.append(("display", obj))
        return Handle() if kwargs.get("display_id") else None

    monkeypatch.setattr(plots, "_in_ipython_kernel", lambda: True)
    monkeypatch.setattr(plots, "_display", fake_display)
    calls = []

    def draw(k):
        calls.append(k)
        return plots.histogram(list(range(k)), bins=3)

    widgets.interact(draw, name="live", k=(1, 9, 1, 4))
    assert calls == [4]  # drawn once; the widget's own first call is skipped
    assert (tmp_path / "live.png").is_file()
    kinds = [(kind, type(obj).__name__) for kind, obj in shown]
    assert kinds == [("display", "Figure"), ("display", "interactive")]
    slider = shown[1][1].children[0]
    assert type(slider).__name__ == "IntSlider" and slider.continuous_update is False
    slider.value = 7
    assert calls == [4, 7]
    assert shown[-1][0] == "update" and isinstance(shown[-1][1], Figure)
    assert plt.get_fignums() == []


def test_interact_static_under_grading(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setattr(plots, "_in_ipython_kernel", lambda: True)
    displayed = []
    monkeypatch.setattr(plots, "_display", lambda obj, **kw: displayed.append(obj))
    calls = []
    widgets.interact(lambda a: calls.append(a) or plots.plot_curves({"a": [a]}), a=(0, 3, 1, 2))
    assert calls == [2]
    assert [type(o).__name__ for o in displayed] == ["Figure"]  # no sliders while grading
