"""Student-readable assertions and float64 gradient checks for notebook tests.

Every check raises ``AssertionError`` with a message written for students: which
function and input, which element, expected vs got, and a hint.  The object under
test is never trusted: types are compared exactly (``type(x) is torch.Tensor``;
``torch.nn.Parameter`` is allowed) and values are compared with torch ops on copies
made here, so a custom ``__eq__``/``__bool__``/``__float__`` cannot pass a check.
Nothing here writes to stderr or warns (an nbgrader test cell that does scores 0);
gradient checks always run in float64.

Mistakes of the test author (unknown input names, non-float ``wrt``) raise
``ValueError``/``TypeError`` instead, so they are not mistaken for student errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "assert_tensor",
    "assert_close",
    "assert_equal",
    "gradcheck",
    "assert_grad_matches",
    "assert_no_grad",
    "assert_no_inplace",
]

_SEED = 1234  # upstream weights are random but the same on every run
_PREVIEW = 12  # messages show whole tensors/lists up to this many elements
_PRIMITIVES = (bool, int, float, str, bytes, type(None))
_INPLACE_HINT = (
    "use out-of-place ops (x = x + 1, not x += 1 / x.add_(1); x.masked_fill(...), not "
    "x.masked_fill_(...)), or write into a .clone()"
)


# --------------------------------------------------------------------------- types


def _is_tensor(x: object) -> bool:
    t = type(x)
    return t is torch.Tensor or t is torch.nn.Parameter


def _is_exact(x: object, types: Sequence[type]) -> bool:
    t = type(x)
    return any(t is candidate for candidate in types)


def _typename(x: object) -> str:
    t = type(x)
    module = getattr(t, "__module__", "")
    qualname = getattr(t, "__qualname__", "?")
    return qualname if module == "builtins" else f"{module}.{qualname}"


def _show(x: object) -> str:
    """repr of a value of an exact primitive type (or a list/tuple of them), else its type."""
    if _is_exact(x, _PRIMITIVES):
        text = repr(x)
        return text if len(text) <= 80 else text[:77] + "..."
    if _is_exact(x, (list, tuple)) and all(_is_exact(v, _PRIMITIVES) for v in x[:10]):
        return _fmt_seq(x, 0, 10)
    return f"<{_typename(x)}>"


def _fmt_seq(seq: Sequence[Any], start: int = 0, stop: int | None = None) -> str:
    stop = len(seq) if stop is None else min(stop, len(seq))
    items = ", ".join(repr(v) for v in seq[start:stop])
    left = "..., " if start > 0 else ""
    right = ", ..." if stop < len(seq) else ""
    return f"[{left}{items}{right}]"


def _not_tensor_hint(x: object) -> str:
    t = type(x)
    if x is None:
        return "got None — did you forget to `return` the result?"
    if str(getattr(t, "__module__", "")).split(".")[0] == "numpy":
        return f"got a NumPy {_typename(x)}; return a torch.Tensor (stay with torch ops, no .numpy())"
    if _is_exact(x, (bool, int, float)):
        return f"got a Python {t.__name__}; return a tensor (don't call .item(), float() or int())"
    if _is_exact(x, (list, tuple)):
        return f"got a Python {t.__name__}; return a single tensor (e.g. torch.stack the pieces)"
    if issubclass(t, torch.Tensor):
        return f"got a subclass of torch.Tensor ({_typename(x)}); return a plain torch.Tensor"
    return f"got {_typename(x)}; return a torch.Tensor"


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_hint(got: tuple[int, ...], expected: tuple[int | None, ...]) -> str:
    if any(d is None for d in expected):
        return ""
    if math.prod(got) == math.prod(expected):  # type: ignore[arg-type]
        if [d for d in got if d != 1] == [d for d in expected if d != 1]:
            return "only size-1 dimensions differ — keepdim=, squeeze() or unsqueeze()?"
        return "same number of elements — a wrong view/reshape, transpose or permute?"
    if len(got) == len(expected) - 1:
        return "one dimension is missing — did you reduce (sum/mean) over a dimension that must stay?"
    if len(got) == len(expected) and len(set(got)) < len(got) and len(set(expected)) == len(expected):
        return "an accidental broadcast? ([B] op [B, 1] gives [B, B])"
    return ""


def _dtype_hint(got: torch.dtype, expected: torch.dtype) -> str:
    if expected is torch.bool:
        return "expected a boolean mask; comparisons (x > 0, x == y) give torch.bool"
    if expected.is_floating_point and got.is_floating_point:
        return "keep the input dtype (no .float()/.double(); create new tensors with dtype=x.dtype or *_like)"
    if expected.is_floating_point:
        return "got an integer/bool tensor; convert with .to(x.dtype) before doing float arithmetic"
    if got.is_floating_point:
        return "expected integers (ids/indices/counts); use integer ops (//, argmax) or .long()"
    return f"convert with .to({expected})"


# ------------------------------------------------------------------ value compare


def _as_cpu64(x: torch.Tensor) -> torch.Tensor:
    """A float64 (complex128 for complex) CPU copy that shares nothing with x."""
    dtype = torch.complex128 if x.is_complex() else torch.float64
    return x.detach().to(device="cpu", dtype=dtype, copy=True)


def _mismatch(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Boolean mask of elements that are not close; NaN matches only NaN, inf only itself."""
    both_nan = got.isnan() & expected.isnan()
    tol_ok = torch.isfinite(expected) & ((got - expected).abs() <= atol + rtol * expected.abs())
    return ~((got == expected) | tol_ok | both_nan)


def _num(v: complex | float) -> str:
    return f"{v:.10g}"


def _fmt_values(t: torch.Tensor) -> str:
    if t.dim() == 0:
        return _num(t.item())
    return "[" + ", ".join(_fmt_values(row) for row in t) + "]"


def _pattern_hint(got: torch.Tensor, expected: torch.Tensor, got_label: str = "got") -> str:
    """Hints for errors with a recognisable shape: all zeros, a sign flip, a constant factor."""
    if got.is_complex() or expected.is_complex():
        return ""
    finite = torch.isfinite(got) & torch.isfinite(expected)
    if finite.all() and (got == 0).all() and not (expected == 0).all():
        return f"{got_label} is all zeros"
    if got.dim() == 2 and got.shape[0] == got.shape[1] > 1 and torch.allclose(got, expected.T):
        return "this is the transpose of the expected value"
    # ratios are only meaningful where |expected| is not tiny (finite differences are noisy there)
    usable = finite & (expected.abs() > 1e-3 * expected[finite].abs().max()) if finite.any() else finite
    if int(usable.sum()) < 2:
        return ""
    ratio = got[usable] / expected[usable]
    r0 = ratio[0].item()
    if (ratio - r0).abs().max().item() > 1e-4 * max(1.0, abs(r0)) or abs(r0 - 1) < 1e-9:
        return ""
    if abs(r0 + 1) < 1e-6:
        return "the sign is flipped everywhere"
    if abs(r0) < 1e-12:
        return "got zeros where the expected values are non-zero"
    return f"every value is {r0:.6g} x the expected one — a missing/extra constant factor (mean vs sum, 1/N)?"


def describe_mismatch(
    got: torch.Tensor,
    expected: torch.Tensor,
    bad: torch.Tensor,
    *,
    name: str,
    atol: float,
    rtol: float,
    got_label: str = "got",
    expected_label: str = "expected",
    hint: str = "",
) -> str:
    """Message body for a value mismatch: first bad element, counts, max abs diff, a hint.

    ``got`` and ``expected`` are CPU float64/complex128 tensors of one shape and ``bad``
    the mask of mismatching elements (at least one is True).  Without ``hint`` one is
    guessed from the pattern of the error.
    """
    idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
    g, e = got[idx].item(), expected[idx].item()
    where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
    first = f"{where}: {expected_label} {_num(e)}, {got_label} {_num(g)}"
    if math.isfinite(abs(g)) and math.isfinite(abs(e)):
        first += f" (|diff| {_num(abs(g - e))})"
    lines = [first]
    finite = torch.isfinite(got) & torch.isfinite(expected)
    max_diff = (got - expected).abs()[finite].max().item() if finite.any() else math.nan
    lines.append(
        f"{int(bad.sum())} of {bad.numel()} element(s) differ (atol={atol:g}, rtol={rtol:g}); "
        f"max abs diff {_num(max_diff)}" + ("" if finite.all() else " (over elements finite in both)")
    )
    if 1 < bad.numel() <= _PREVIEW:
        lines.append(f"{expected_label}: {_fmt_values(expected)}")
        lines.append(f"{got_label}: {_fmt_values(got)}")
    stray = ~torch.isfinite(got) & torch.isfinite(expected)
    if not hint and stray.any():
        first_stray = tuple(int(i) for i in stray.nonzero()[0].tolist())
        hint = (
            f"NaN/inf in {got_label} where the expected value is finite (first at {list(first_stray)}) "
            "— look for log(0), 0/0, exp overflow, or masked positions that must be excluded before the op"
        )
    hint = hint or _pattern_hint(got, expected, got_label)
    if hint:
        lines.append(f"hint: {hint}")
    return "\n  ".join(lines)


def _compare_tensors(
    got: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    name: str,
    header: str = "",
    got_label: str = "got",
    expected_label: str = "expected",
    hint: str = "",
) -> None:
    g, e = _as_cpu64(got), _as_cpu64(expected)
    bad = _mismatch(g, e, atol, rtol)
    if bad.any():
        body = describe_mismatch(
            g, e, bad, name=name, atol=atol, rtol=rtol, got_label=got_label, expected_label=expected_label, hint=hint
        )
        raise AssertionError((header + "\n  " if header else "") + body)


# ----------------------------------------------------------------------- asserts


def assert_tensor(
    x: object,
    *,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | None = None,
    name: str = "output",
) -> None:
    """Assert x is exactly a torch.Tensor (or Parameter) with the given shape and dtype.

    ``None`` entries in ``shape`` match any size.
    """
    if not _is_tensor(x):
        raise AssertionError(f"{name}: expected a torch.Tensor — {_not_tensor_hint(x)}")
    if shape is not None:
        want = tuple(None if d is None else int(d) for d in shape)
        have = tuple(x.shape)
        if len(have) != len(want) or any(w is not None and w != h for h, w in zip(have, want)):
            hint = _shape_hint(have, want)
            raise AssertionError(
                f"{name}: shape {_fmt_shape(have)}, expected {_fmt_shape(want)}" + (f" — {hint}" if hint else "")
            )
    if dtype is not None and x.dtype != dtype:
        raise AssertionError(f"{name}: dtype {x.dtype}, expected {dtype} — {_dtype_hint(x.dtype, dtype)}")


def assert_close(
    got: object,
    expected: torch.Tensor | float | int | Sequence[Any],
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    name: str = "output",
) -> None:
    """Assert got matches expected in type, shape, dtype and (within atol + rtol*|expected|) value.

    ``expected`` may be a tensor, a Python float/int, or a list/tuple of those (checked
    element-wise).  NaN in ``got`` passes only where ``expected`` is NaN too.
    """
    if _is_tensor(expected):
        assert_tensor(got, shape=tuple(expected.shape), dtype=expected.dtype, name=name)
        _compare_tensors(got, expected, atol=atol, rtol=rtol, name=name)
    elif _is_exact(expected, (float, int)):
        if type(got) is not type(expected):
            kind = type(expected).__name__
            hint = "return .item() of the 0-d tensor" if _is_tensor(got) else f"return a Python {kind}"
            raise AssertionError(f"{name}: expected a Python {kind}, got {_typename(got)} — {hint}")
        g = torch.tensor(got, dtype=torch.float64)
        _compare_tensors(g, torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=rtol, name=name)
    elif _is_exact(expected, (list, tuple)):
        if type(got) is not type(expected):
            raise AssertionError(f"{name}: expected a {type(expected).__name__}, got {_typename(got)}")
        if len(got) != len(expected):
            raise AssertionError(f"{name}: expected {len(expected)} items, got {len(got)}")
        for i, (g_item, e_item) in enumerate(zip(got, expected)):
            assert_close(g_item, e_item, atol=atol, rtol=rtol, name=f"{name}[{i}]")
    else:
        raise TypeError(f"assert_close: unsupported expected type {_typename(expected)}")


def _key_tag(key: object) -> object:
    """A hashable, type-aware stand-in for a dict key (so True and 1 differ); None if unsupported."""
    if _is_exact(key, _PRIMITIVES):
        return (type(key).__name__, key)
    if type(key) is tuple:
        tags = tuple(_key_tag(k) for k in key)
        return None if any(t is None for t in tags) else ("tuple", tags)
    return None


def _type_hint(got: object, expected: object) -> str:
    tg, te = type(got), type(expected)
    if tg is bool and te is int:
        return "bool is not int: return a number, not a comparison result"
    if tg is int and te is bool:
        return "expected True/False"
    if tg is float and te is int:
        return "use integer arithmetic (// instead of /) or int(...)"
    if _is_tensor(got):
        return "convert with .tolist() / .item()"
    if str(getattr(tg, "__module__", "")).split(".")[0] == "numpy":
        return "convert NumPy values with int()/float()/.tolist()"
    if issubclass(tg, te):
        return f"got a subclass of {te.__name__}; return a plain {te.__name__}"
    return ""


def _first_difference(got: object, expected: object, path: str) -> str | None:
    if _is_tensor(expected):
        try:
            assert_close(got, expected, atol=0.0, rtol=0.0, name=path)  # type: ignore[arg-type]
        except AssertionError as exc:
            return str(exc)
        return None
    te = type(expected)
    if type(got) is not te:
        hint = _type_hint(got, expected)
        return (
            f"{path}: expected {te.__name__} {_show(expected)}, got {_typename(got)} {_show(got)}"
            + (f" — {hint}" if hint else "")
        )
    if _is_exact(expected, _PRIMITIVES):
        if got == expected or (te is float and math.isnan(got) and math.isnan(expected)):  # type: ignore[arg-type]
            return None
        if te is str or te is bytes:
            i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            lo, hi = max(0, i - 10), min(i + 10, max(len(got), len(expected)))
            return (
                f"{path}: first difference at position {i} (lengths: got {len(got)}, expected {len(expected)})"
                f"\n  expected[{lo}:{hi}] = {expected[lo:hi]!r}"
                f"\n  got[{lo}:{hi}]      = {got[lo:hi]!r}"
            )
        return f"{path}: expected {expected!r}, got {got!r}"
    if te is list or te is tuple:
        for i, (g_item, e_item) in enumerate(zip(got, expected)):
            diff = _first_difference(g_item, e_item, f"{path}[{i}]")
            if diff is not None:
                if _is_exact(e_item, _PRIMITIVES) and len(expected) > 1:
                    lo = max(0, i - 3)
                    diff += f"\n  expected{_fmt_window(expected, lo)}\n  got{_fmt_window(got, lo)}"
                return diff
        if len(got) != len(expected):
            n = min(len(got), len(expected))
            if len(got) < len(expected):
                extra = f"first missing item: {path}[{n}] = {_show(expected[n])}"
            else:
                extra = f"first extra item: {path}[{n}] = {_show(got[n])}"
            return f"{path}: expected {len(expected)} items, got {len(got)}; the first {n} agree; {extra}"
        return None
    if te is dict:
        got_keys = {}
        for key in got:
            tag = _key_tag(key)
            if tag is None:
                return f"{path}: has a key of unsupported type {_typename(key)}"
            got_keys[tag] = key
        want_keys = {_key_tag(key): key for key in expected}
        missing = [want_keys[t] for t in want_keys if t not in got_keys]
        extra = [got_keys[t] for t in got_keys if t not in want_keys]
        if missing or extra:
            parts = [
                f"{len(keys)} {label} ({', '.join(_show(k) for k in keys[:5])}{', ...' if len(keys) > 5 else ''})"
                for label, keys in (("missing", missing), ("unexpected", extra))
                if keys
            ]
            return f"{path}: keys differ; " + ", ".join(parts)
        for tag, key in want_keys.items():
            diff = _first_difference(got[got_keys[tag]], expected[key], f"{path}[{key!r}]")
            if diff is not None:
                return diff
        return None
    raise TypeError(f"assert_equal: unsupported expected type {_typename(expected)}")


def _fmt_window(seq: Sequence[Any], lo: int, width: int = 7) -> str:
    hi = min(lo + width, len(seq))
    shown = _fmt_seq(seq, lo, hi) if all(_is_exact(v, _PRIMITIVES) for v in seq[lo:hi]) else "<mixed types>"
    return f"[{lo}:{hi}] = {shown}"


def assert_equal(got: object, expected: object, *, name: str = "output") -> None:
    """Assert exact equality of ints/floats/str/bytes/bool/None, lists/tuples/dicts of them, or tensors.

    Types must match exactly at every position (bool is not int, tuple is not list);
    the message names the first differing position.
    """
    diff = _first_difference(got, expected, name)
    if diff is not None:
        raise AssertionError(diff)


# ---------------------------------------------------------------- gradient checks


def _fn_name(fn: Callable[..., Any], name: str | None) -> str:
    if name is not None:
        return name
    fn_name = getattr(fn, "__name__", None)
    return fn_name if type(fn_name) is str else _typename(fn)


def _float_keys(inputs: Mapping[str, Any], keys: str | Sequence[str] | None, check: str) -> list[str]:
    """Validate the test author's choice of inputs; default: all float tensors."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{check}: inputs must be a dict of keyword arguments, got {_typename(inputs)}")
    if keys is None:
        chosen = [k for k, v in inputs.items() if _is_tensor(v) and v.is_floating_point()]
        if not chosen:
            raise ValueError(f"{check}: no floating-point tensor among inputs {list(inputs)}")
        return chosen
    chosen = [keys] if isinstance(keys, str) else list(keys)
    for k in chosen:
        if k not in inputs:
            raise ValueError(f"{check}: {k!r} is not one of the inputs {list(inputs)}")
        if not (_is_tensor(inputs[k]) and inputs[k].is_floating_point()):
            raise ValueError(f"{check}: input {k!r} must be a floating-point torch.Tensor")
    return chosen


def _to_float64(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Float tensors become detached float64 copies; everything else is passed through."""
    return {
        k: v.detach().to(dtype=torch.float64, copy=True) if _is_tensor(v) and v.is_floating_point() else v
        for k, v in inputs.items()
    }


def _call(fn: Callable[..., Any], base: Mapping[str, Any], override: Mapping[str, torch.Tensor]) -> Any:
    """fn(**base) with some inputs replaced; other tensors are cloned so fn cannot alter base."""
    kwargs = {k: override[k] if k in override else (v.clone() if _is_tensor(v) else v) for k, v in base.items()}
    return fn(**kwargs)


def _select_output(out: object, index: int | str | None, fname: str) -> torch.Tensor:
    if index is None:
        if _is_tensor(out):
            return out  # type: ignore[return-value]
        if isinstance(out, (tuple, list)):
            for item in out:
                if _is_tensor(item):
                    return item
        raise AssertionError(
            f"`{fname}` must return a tensor (or a tuple starting with one) — {_not_tensor_hint(out)}"
        )
    if isinstance(out, (tuple, list)) and type(index) is int and -len(out) <= index < len(out):
        item = out[index]
    elif isinstance(out, dict) and index in out:
        item = out[index]
    else:
        raise AssertionError(f"`{fname}` returned {_typename(out)}; it has no output {index!r}")
    if not _is_tensor(item):
        raise AssertionError(f"output {index!r} of `{fname}` must be a tensor — {_not_tensor_hint(item)}")
    return item


def _require_differentiable(out: torch.Tensor, fname: str, keys: Sequence[str]) -> None:
    if not out.is_floating_point():
        raise AssertionError(f"`{fname}` returned a {out.dtype} tensor; a differentiable output must be floating point")
    if out.dtype != torch.float64:
        raise AssertionError(
            f"`{fname}` returned dtype {out.dtype} for float64 inputs, expected torch.float64 — "
            "keep the input dtype (no .float(); create new tensors with dtype=x.dtype or *_like)"
        )
    if not out.requires_grad:
        raise AssertionError(
            f"output of `{fname}` does not require grad, so no gradient reaches {_names(keys)} — did you detach / "
            "use .item() / build a new tensor (torch.tensor(...)) from the inputs?"
        )


def _names(keys: Sequence[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys)


def _upstream(out: torch.Tensor) -> torch.Tensor:
    """Fixed random weights in ±[0.5, 1.5], so sum-reductions cannot hide per-element errors."""
    gen = torch.Generator().manual_seed(_SEED)
    magnitude = torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5
    sign = torch.randint(0, 2, out.shape, generator=gen).to(torch.float64) * 2 - 1
    return (magnitude * sign).to(out.device)


def _finite_diff(
    fn: Callable[..., Any],
    base: Mapping[str, Any],
    key: str,
    weight: torch.Tensor,
    eps: float,
    output_index: int | str | None,
    fname: str,
) -> torch.Tensor:
    """Central differences of sum(fn(...) * weight) w.r.t. base[key], on CPU in float64."""
    x = base[key]
    flat = x.reshape(-1)
    grad = torch.empty(flat.numel(), dtype=torch.float64)
    with torch.no_grad():
        for i in range(flat.numel()):
            values = []
            for step in (eps, -eps):
                shifted = flat.clone()
                shifted[i] += step
                out = _select_output(_call(fn, base, {key: shifted.view(x.shape)}), output_index, fname)
                if out.shape != weight.shape:
                    raise AssertionError(
                        f"`{fname}`: output shape changed from {_fmt_shape(tuple(weight.shape))} to "
                        f"{_fmt_shape(tuple(out.shape))} when `{key}` was perturbed"
                    )
                values.append((out.to(torch.float64) * weight).sum().item())
            grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad.view(x.shape)


def gradcheck(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    *,
    wrt: str | Sequence[str] | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    eps: float = 1e-6,
    name: str | None = None,
    output_index: int | str | None = None,
) -> None:
    """Check fn's autograd gradients against central finite differences, in float64.

    ``fn(**inputs)`` returns a tensor, or a tuple/list (first tensor used) / dict; pick
    another output with ``output_index``.  Inputs named in ``wrt`` (default: all float
    tensors) become float64 leaves; other float tensors are cast to float64, the rest is
    passed unchanged.  The gradient of ``sum(output * w)`` for fixed random ``w`` is compared
    element by element; then ``torch.autograd.gradcheck`` checks the full Jacobian.
    Keep inputs small: this costs two calls of fn per input element.
    """
    fname = _fn_name(fn, name)
    keys = _float_keys(inputs, wrt, "gradcheck")
    base = _to_float64(inputs)
    leaves = {k: base[k].clone().requires_grad_(True) for k in keys}
    out = _select_output(_call(fn, base, leaves), output_index, fname)
    _require_differentiable(out, fname, keys)
    weight = _upstream(out)
    grads = torch.autograd.grad((out * weight).sum(), [leaves[k] for k in keys], allow_unused=True)
    for key, grad in zip(keys, grads):
        numeric = _finite_diff(fn, base, key, weight, eps, output_index, fname)
        analytic = torch.zeros_like(numeric) if grad is None else grad.detach().cpu()
        hint = ""
        if (analytic == 0).all() and (numeric.abs() > atol).any():
            hint = (
                f"autograd gives no gradient for `{key}`, but the output changes when `{key}` changes — the "
                "gradient path is cut (.detach(), .data, .item(), torch.tensor(...))"
            )
        elif (numeric.abs() <= atol).all():
            hint = f"the output does not depend on `{key}`, yet autograd reports a gradient — check the backward"
        _compare_tensors(
            analytic,
            numeric,
            atol=atol,
            rtol=rtol,
            name=key,
            header=f"gradcheck of `{fname}`: wrong gradient w.r.t. `{key}` "
            "(of sum(output * w) for fixed random weights w)",
            got_label="autograd",
            expected_label="finite differences",
            hint=hint,
        )

    def by_position(*xs: torch.Tensor) -> torch.Tensor:
        return _select_output(_call(fn, base, dict(zip(keys, xs))), output_index, fname)

    leaves_again = tuple(base[k].clone().requires_grad_(True) for k in keys)
    try:
        ok = torch.autograd.gradcheck(
            by_position, leaves_again, eps=eps, atol=atol, rtol=rtol, raise_exception=False, fast_mode=False
        )
        detail = ""
    except Exception as exc:  # any failure inside torch's check is a failed check
        ok, detail = False, f"\n  {type(exc).__name__}: {exc}"
    if not ok:
        raise AssertionError(
            f"gradcheck of `{fname}`: torch.autograd.gradcheck finds the Jacobian w.r.t. {_names(keys)} wrong for some "
            "output element, although the weighted sum matched — is the backward wrong for some outputs, "
            f"or is `{fname}` non-deterministic?{detail}"
        )


def assert_grad_matches(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    wrt: str,
    expected_grad: torch.Tensor | Callable[[dict[str, Any]], torch.Tensor],
    *,
    upstream: torch.Tensor | float | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    name: str | None = None,
    output_index: int | str | None = None,
) -> None:
    """Assert the float64 gradient of ``(fn(**inputs) * upstream).sum()`` w.r.t. ``inputs[wrt]``.

    ``expected_grad`` is a tensor or a callable given float64 copies of the inputs;
    ``upstream`` defaults to ones and must have the output's shape if it is a tensor.
    """
    fname = _fn_name(fn, name)
    (key,) = _float_keys(inputs, [wrt], "assert_grad_matches")
    base = _to_float64(inputs)
    leaf = base[key].clone().requires_grad_(True)
    out = _select_output(_call(fn, base, {key: leaf}), output_index, fname)
    _require_differentiable(out, fname, [key])
    if upstream is None:
        weight = torch.ones_like(out)
    elif _is_tensor(upstream):
        assert_tensor(out, shape=tuple(upstream.shape), name=f"output of `{fname}`")
        weight = upstream.detach().to(device=out.device, dtype=torch.float64)
    elif _is_exact(upstream, (float, int)):
        weight = torch.full_like(out, float(upstream))  # type: ignore[arg-type]
    else:
        raise TypeError(f"assert_grad_matches: upstream must be a tensor or a number, got {_typename(upstream)}")
    (grad,) = torch.autograd.grad((out * weight).sum(), [leaf], allow_unused=True)
    if grad is None:
        raise AssertionError(
            f"gradient of `{fname}` does not reach `{key}` — the path from `{key}` to the output is cut "
            "(.detach(), .data, .item(), torch.tensor(...))"
        )
    expected = expected_grad(_to_float64(inputs)) if callable(expected_grad) else expected_grad
    if not _is_tensor(expected) or tuple(expected.shape) != tuple(leaf.shape):
        shape = _fmt_shape(tuple(leaf.shape))
        raise ValueError(f"assert_grad_matches: expected_grad must be a torch.Tensor of shape {shape}")
    _compare_tensors(
        grad,
        expected,
        atol=atol,
        rtol=rtol,
        name=key,
        header=f"wrong gradient of `{fname}` w.r.t. `{key}`",
    )


def _output_tensors(out: object, fname: str) -> list[torch.Tensor]:
    """All tensors in a (nested) tuple/list/dict output; numbers hold none; other objects are rejected."""
    if _is_tensor(out):
        return [out]  # type: ignore[list-item]
    if _is_exact(out, _PRIMITIVES):
        return []
    if isinstance(out, dict):
        return [t for item in out.values() for t in _output_tensors(item, fname)]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _output_tensors(item, fname)]
    raise AssertionError(f"`{fname}` returned {_typename(out)}; expected tensors (possibly in a tuple/list/dict)")


def assert_no_grad(
    fn: Callable[..., Any],
    inputs: Mapping[str, Any],
    blocked: str | Sequence[str],
    *,
    name: str | None = None,
    output_index: int | str | None = None,
) -> None:
    """Assert no gradient flows from fn's output(s) to the ``blocked`` inputs.

    All float tensor inputs become float64 leaves that require grad; every tensor output
    (or only ``output_index``) is back-propagated with fixed random weights.  Each blocked
    input's gradient must be None or exactly zero.
    """
    fname = _fn_name(fn, name)
    keys = _float_keys(inputs, blocked, "assert_no_grad")
    base = _to_float64(inputs)
    leaves = {k: v.clone().requires_grad_(True) for k, v in base.items() if _is_tensor(v) and v.is_floating_point()}
    out = _call(fn, base, leaves)
    outs = [_select_output(out, output_index, fname)] if output_index is not None else _output_tensors(out, fname)
    terms = [(t * _upstream(t)).sum() for t in outs if t.requires_grad]
    if not terms:
        return  # nothing in the output carries a gradient, so none can reach the blocked inputs
    grads = torch.autograd.grad(torch.stack(terms).sum(), [leaves[k] for k in keys], allow_unused=True)
    for key, grad in zip(keys, grads):
        if grad is None:
            continue
        nonzero = (grad != 0).cpu()
        if nonzero.any():
            idx = tuple(int(i) for i in nonzero.nonzero()[0].tolist())
            where = f"{key}[{', '.join(map(str, idx))}]" if idx else key
            raise AssertionError(
                f"gradient of `{fname}` reached `{key}` (e.g. at {where}: {_num(grad.cpu()[idx].item())}), but "
                f"`{key}` must be a constant — did you forget .detach()?"
            )


def _clone_tree(obj: object, path: str, records: list[tuple[str, torch.Tensor, torch.Tensor, int]]) -> object:
    """Copy of obj with every tensor (also inside dict/list/tuple) cloned and recorded."""
    if _is_tensor(obj):
        passed = obj.detach().clone()
        records.append((path, passed, passed.clone(), passed._version))
        return passed
    if type(obj) is dict:
        return {k: _clone_tree(v, f"{path}[{k!r}]", records) for k, v in obj.items()}
    if type(obj) is list or type(obj) is tuple:
        return type(obj)(_clone_tree(v, f"{path}[{i}]", records) for i, v in enumerate(obj))
    return obj


def assert_no_inplace(fn: Callable[..., Any], inputs: Mapping[str, Any], *, name: str | None = None) -> None:
    """Assert ``fn(**inputs)`` leaves every tensor input unchanged (values and version counter).

    fn gets clones (tensors inside dicts/lists/tuples too), so the caller's inputs stay
    intact; modules are passed through unchecked.
    """
    fname = _fn_name(fn, name)
    records: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []
    kwargs = {k: _clone_tree(v, k, records) for k, v in inputs.items()}
    fn(**kwargs)
    for path, passed, before, version in records:
        if passed.shape != before.shape or passed.dtype != before.dtype:
            raise AssertionError(
                f"`{fname}` modified its input `{path}` in place: it was {_fmt_shape(tuple(before.shape))} "
                f"{before.dtype}, now {_fmt_shape(tuple(passed.shape))} {passed.dtype} — {_INPLACE_HINT}"
            )
        same = passed == before
        if before.is_floating_point() or before.is_complex():
            same |= passed.isnan() & before.isnan()
        if not same.all():
            idx = tuple(int(i) for i in (~same).cpu().nonzero()[0].tolist())
            where = f"{path}[{', '.join(map(str, idx))}]" if idx else path
            raise AssertionError(
                f"`{fname}` modified its input `{path}` in place: {where} was {_num(before[idx].item())}, "
                f"now {_num(passed[idx].item())} — {_INPLACE_HINT}"
            )
        if passed._version != version:
            raise AssertionError(
                f"`{fname}` wrote into its input `{path}` in place (version counter {version} -> "
                f"{passed._version}), even though the values ended up the same — {_INPLACE_HINT}"
            )
