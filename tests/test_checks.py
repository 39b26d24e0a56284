"""Tests for helpers.checks: each check passes a correct function and fails a wrong one
with a message that names the culprit."""

import warnings

import pytest
import torch

from helpers import checks


def fails(check, *args, **kwargs) -> str:
    """Run a check that must fail; return its message."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


class Liar:
    """Claims to equal everything and to be truthy/zero."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __bool__(self):
        return True

    def __float__(self):
        return 0.0

    __hash__ = object.__hash__


class LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return torch.ones(self.shape, dtype=torch.bool)


class SpoofedTensor:
    """isinstance(x, torch.Tensor) is True for this, type(x) is not."""

    @property
    def __class__(self):
        return torch.Tensor


class EvilInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# ---------------------------------------------------------------- assert_tensor


def test_assert_tensor_passes_plain_tensors_and_parameters():
    checks.assert_tensor(torch.zeros(2, 3), shape=(2, 3), dtype=torch.float32)
    checks.assert_tensor(torch.zeros(2, 3), shape=(None, 3))
    checks.assert_tensor(torch.nn.Parameter(torch.zeros(4)), shape=[4], dtype=torch.float32)


@pytest.mark.parametrize(
    "value, words",
    [
        (None, ["None", "return"]),
        (1.5, ["Python float", ".item()"]),
        ([torch.zeros(2)], ["Python list", "torch.stack"]),
        (torch.zeros(2).as_subclass(LyingTensor), ["subclass", "LyingTensor"]),
        (SpoofedTensor(), ["SpoofedTensor"]),
        (Liar(), ["Liar"]),
    ],
)
def test_assert_tensor_rejects_non_tensors(value, words):
    message = fails(checks.assert_tensor, value, name="logprobs")
    assert message.startswith("logprobs:")
    for word in words:
        assert word in message


def test_assert_tensor_rejects_numpy():
    np = pytest.importorskip("numpy")
    assert "NumPy" in fails(checks.assert_tensor, np.zeros(3))


def test_assert_tensor_shape_and_dtype_messages():
    message = fails(checks.assert_tensor, torch.zeros(3, 2), shape=(2, 3), name="values")
    assert "values: shape (3, 2), expected (2, 3)" in message and "transpose" in message
    message = fails(checks.assert_tensor, torch.zeros(4), shape=(4, 1))
    assert "keepdim" in message
    message = fails(checks.assert_tensor, torch.zeros(4), shape=(4, 5))
    assert "reduce" in message
    message = fails(checks.assert_tensor, torch.zeros(2), dtype=torch.float64)
    assert "dtype torch.float32, expected torch.float64" in message and "keep the input dtype" in message
    assert "boolean mask" in fails(checks.assert_tensor, torch.zeros(2), dtype=torch.bool)
    assert ".long()" in fails(checks.assert_tensor, torch.zeros(2), dtype=torch.int64)


# ----------------------------------------------------------------- assert_close


def test_assert_close_passes_within_tolerance_and_on_matching_nans():
    expected = torch.tensor([1.0, float("nan"), float("inf"), -2.0], dtype=torch.float64)
    got = expected.clone()
    got[0] += 1e-9
    checks.assert_close(got, expected)
    checks.assert_close(0.5 + 1e-9, 0.5)
    checks.assert_close(3, 3)
    checks.assert_close([torch.ones(2), (1.0, 2)], [torch.ones(2), (1.0, 2)])
    checks.assert_close(torch.ones(2, requires_grad=True) * 1, torch.ones(2))


def test_assert_close_value_message_names_index_values_and_diff():
    got = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    expected = torch.tensor([[1.0, 2.0], [3.5, 4.0]])
    message = fails(checks.assert_close, got, expected, name="advantages")
    assert "advantages[1, 0]: expected 3.5, got 3" in message
    assert "1 of 4 element(s) differ" in message and "max abs diff 0.5" in message


def test_assert_close_hints_at_constant_factor_and_sign():
    expected = torch.tensor([1.0, -2.0, 3.0])
    assert "0.5 x the expected" in fails(checks.assert_close, expected / 2, expected)
    assert "sign is flipped" in fails(checks.assert_close, -expected, expected)
    assert "all zeros" in fails(checks.assert_close, torch.zeros(3), expected)


def test_assert_close_nan_and_inf_handling():
    expected = torch.tensor([1.0, 2.0, 3.0])
    message = fails(checks.assert_close, torch.tensor([1.0, float("nan"), 3.0]), expected)
    assert "output[1]: expected 2, got nan" in message and "log(0)" in message
    # NaN is only allowed where expected has NaN, and expected NaN must be matched
    fails(checks.assert_close, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, float("nan"), 3.0]))
    fails(checks.assert_close, torch.tensor([1.0, 2.0, float("inf")]), expected)
    # an infinite expected value is matched only by the same infinity
    fails(checks.assert_close, torch.tensor([1.0, 2.0, 1e30]), torch.tensor([1.0, 2.0, float("inf")]))
    fails(checks.assert_close, torch.tensor([float("-inf")]), torch.tensor([float("inf")]))
    fails(checks.assert_close, float("nan"), 1.0)


def test_assert_close_type_shape_dtype():
    expected = torch.zeros(2, 3)
    assert "shape (3, 2), expected (2, 3)" in fails(checks.assert_close, torch.zeros(3, 2), expected)
    assert "dtype torch.float64, expected torch.float32" in fails(
        checks.assert_close, torch.zeros(2, 3, dtype=torch.float64), expected
    )
    assert "subclass" in fails(checks.assert_close, expected.as_subclass(LyingTensor), expected)
    assert "expected a torch.Tensor" in fails(checks.assert_close, Liar(), expected)
    assert "expected a torch.Tensor" in fails(checks.assert_close, SpoofedTensor(), expected)
    assert ".item()" in fails(checks.assert_close, torch.tensor(0.5), 0.5)
    assert "expected a Python float" in fails(checks.assert_close, Liar(), 0.5)
    assert "expected 2 items, got 1" in fails(checks.assert_close, [1.0], [1.0, 2.0])
    assert "output[1]" in fails(checks.assert_close, [1.0, 2.5], [1.0, 2.0])
    with pytest.raises(TypeError):
        checks.assert_close(object(), object())


# ----------------------------------------------------------------- assert_equal


def test_assert_equal_passes_exact_matches():
    value = [1, (2, "a", b"b"), {"k": [True, None, 1.5]}, float("nan")]
    checks.assert_equal(value, [1, (2, "a", b"b"), {"k": [True, None, 1.5]}, float("nan")])
    checks.assert_equal(torch.tensor([1, 2]), torch.tensor([1, 2]))
    checks.assert_equal({(1, "x"): 2, 3: 4}, {3: 4, (1, "x"): 2})


def test_assert_equal_bool_is_not_int_and_types_are_exact():
    message = fails(checks.assert_equal, [1, True], [1, 1], name="ids")
    assert "ids[1]: expected int 1, got bool True" in message and "bool is not int" in message
    assert "expected True/False" in fails(checks.assert_equal, 1, True)
    assert "//" in fails(checks.assert_equal, 2.0, 2)
    assert "expected tuple" in fails(checks.assert_equal, [1, 2], (1, 2))
    assert "subclass of int" in fails(checks.assert_equal, EvilInt(5), 3)
    assert "Liar" in fails(checks.assert_equal, Liar(), [1, 2])
    assert "Liar" in fails(checks.assert_equal, [Liar()], [1])
    assert ".tolist()" in fails(checks.assert_equal, torch.tensor([1, 2]), [1, 2])
    assert "keys differ" in fails(checks.assert_equal, {True: 1}, {1: 1})
    with pytest.raises(TypeError):
        checks.assert_equal(object(), object())


def test_assert_equal_rejects_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert "int()" in fails(checks.assert_equal, np.int64(3), 3)


def test_assert_equal_names_first_difference():
    expected = [464, 3290, 257, 1, 2, 9, 4, 5, 6]
    message = fails(checks.assert_equal, [464, 3290, 257, 1, 2, 3, 4, 5, 6], expected, name="tokens")
    assert "tokens[5]: expected 9, got 3" in message and "[2:9]" in message
    message = fails(checks.assert_equal, [1, 2], [1, 2, 3])
    assert "expected 3 items, got 2" in message and "output[2] = 3" in message
    message = fails(checks.assert_equal, "hello world", "hello wurld")
    assert "position 7" in message and "'hello wurld'" in message
    message = fails(checks.assert_equal, {b"a": 1, b"b": 2}, {b"a": 1, b"b": 3}, name="ranks")
    assert "ranks[b'b']: expected 3, got 2" in message
    message = fails(checks.assert_equal, {"a": 1}, {"a": 1, "b": 2})
    assert "1 missing ('b')" in message
    message = fails(checks.assert_equal, torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3]))
    assert "output[1]: expected 5, got 2" in message
    assert "dtype" in fails(checks.assert_equal, torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))


# -------------------------------------------------------------------- gradcheck


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class HalfSquare(Square):
    @staticmethod
    def backward(ctx, grad):  # wrong: forgets the factor 2
        (x,) = ctx.saved_tensors
        return x * grad


class FlippedScale(torch.autograd.Function):
    """y = x * a, with a backward that flips the upstream gradient: right only for uniform upstream."""

    @staticmethod
    def forward(ctx, x, a):
        ctx.save_for_backward(a)
        return x * a

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad.flip(-1) * a, None


class WrongSecondInput(torch.autograd.Function):
    """z = x * y, correct for x, wrong for y."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y, grad * y


def masked_square_sum(x, mask, dim):
    return (Square.apply(x) * mask).sum(dim)


def test_gradcheck_passes_correct_functions():
    x = torch.randn(3, 4)  # float32: gradcheck casts it to float64 itself
    mask = torch.tensor([[1, 0, 1, 1]] * 3, dtype=torch.bool)
    checks.gradcheck(masked_square_sum, {"x": x, "mask": mask, "dim": 1})
    checks.gradcheck(lambda x, y: (x * y, torch.tensor(1)), {"x": torch.randn(3), "y": torch.randn(3)})
    checks.gradcheck(lambda x, y: (x.sum(), x * y), {"x": torch.randn(3), "y": torch.randn(3)}, output_index=1)
    checks.gradcheck(lambda x, ids: x.gather(0, ids), {"x": torch.randn(5), "ids": torch.tensor([4, 0, 0])})


def test_gradcheck_catches_wrong_backward_and_names_input():
    message = fails(checks.gradcheck, lambda x: HalfSquare.apply(x), {"x": torch.randn(2, 3)}, name="half_square")
    assert "gradcheck of `half_square`: wrong gradient w.r.t. `x`" in message
    assert "x[0, 0]: finite differences" in message and "autograd" in message
    assert "0.5 x the expected" in message
    message = fails(checks.gradcheck, WrongSecondInput.apply, {"x": torch.randn(3), "y": torch.randn(3)})
    assert "w.r.t. `y`" in message and "`x`" not in message


def test_gradcheck_upstream_is_not_uniform():
    """A backward that permutes the upstream gradient is right for ones, wrong in general."""
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    FlippedScale.apply(x, a).sum().backward()
    assert torch.equal(x.grad, a)  # the bug is invisible with upstream ones...
    fails(checks.gradcheck, FlippedScale.apply, {"x": torch.randn(3), "a": a}, wrt="x")  # ...but not here


def test_gradcheck_catches_cut_graphs_and_dtype_changes():
    x = {"x": torch.randn(3)}
    message = fails(checks.gradcheck, lambda x: x.detach() * 2, x)
    assert "does not require grad, so no gradient reaches `x`" in message and ".item()" in message
    message = fails(checks.gradcheck, lambda x: torch.tensor([v * 2 for v in x.tolist()], dtype=torch.float64), x)
    assert "does not require grad" in message
    message = fails(checks.gradcheck, lambda x, y: x * y.detach(), {"x": torch.randn(3), "y": torch.randn(3)})
    assert "w.r.t. `y`" in message and "gradient path is cut" in message
    assert "keep the input dtype" in fails(checks.gradcheck, lambda x: (x * 2).float(), x)
    assert "floating point" in fails(checks.gradcheck, lambda x: (x > 0).long(), x)
    assert "return a single tensor" in fails(checks.gradcheck, lambda x: x.tolist(), x)


def test_gradcheck_output_index_and_author_errors():
    inputs = {"x": torch.randn(3)}
    message = fails(checks.gradcheck, lambda x: (x * 2, HalfSquare.apply(x)), inputs, output_index=1)
    assert "w.r.t. `x`" in message
    assert "no output 5" in fails(checks.gradcheck, lambda x: (x, x), inputs, output_index=5)
    with pytest.raises(ValueError, match="'y'"):
        checks.gradcheck(lambda x: x, inputs, wrt=["y"])
    with pytest.raises(ValueError, match="floating-point"):
        checks.gradcheck(lambda x, ids: x, {"x": torch.randn(2), "ids": torch.tensor([1])}, wrt="ids")


def test_gradcheck_reports_torch_gradcheck_verdict(monkeypatch):
    monkeypatch.setattr(torch.autograd, "gradcheck", lambda *args, **kwargs: False)
    message = fails(checks.gradcheck, lambda x: x * x, {"x": torch.randn(2)})
    assert "torch.autograd.gradcheck" in message


def test_gradcheck_does_not_touch_callers_inputs():
    x = torch.randn(3)
    before = x.clone()
    checks.gradcheck(lambda x: x * x, {"x": x})
    assert x.dtype == torch.float32 and torch.equal(x, before) and not x.requires_grad


# ---------------------------------------------------------- assert_grad_matches


def test_assert_grad_matches_passes_analytic_gradients():
    inputs = {"x": torch.randn(2, 3), "scale": 3.0}
    checks.assert_grad_matches(lambda x, scale: scale * x**2, inputs, "x", lambda i: 6 * i["x"])
    upstream = torch.randn(2, 3, dtype=torch.float64)
    expected = 6 * inputs["x"].double() * upstream
    checks.assert_grad_matches(lambda x, scale: scale * x**2, inputs, "x", expected, upstream=upstream)
    checks.assert_grad_matches(lambda x, scale: scale * x**2, inputs, "x", lambda i: 12 * i["x"], upstream=2.0)


def test_assert_grad_matches_catches_wrong_gradients():
    inputs = {"x": torch.randn(2, 3)}
    message = fails(checks.assert_grad_matches, lambda x: HalfSquare.apply(x), inputs, "x", lambda i: 2 * i["x"],
                    name="square")
    assert "wrong gradient of `square` w.r.t. `x`" in message and "x[0, 0]" in message
    assert "0.5 x the expected" in message
    message = fails(checks.assert_grad_matches, lambda x, y: x * y.detach(), {"x": torch.randn(2), "y": torch.randn(2)},
                    "y", lambda i: i["x"])
    assert "no gradient reaches `y`" in message
    message = fails(checks.assert_grad_matches, lambda x, y: x + y, {"x": torch.randn(2), "y": torch.randn(2)}, "y",
                    lambda i: i["x"], name="add")
    assert "wrong gradient of `add` w.r.t. `y`" in message
    message = fails(checks.assert_grad_matches, lambda x: x.sum(0), inputs, "x", torch.ones(2, 3),
                    upstream=torch.ones(2))
    assert "shape (3,), expected (2,)" in message
    with pytest.raises(ValueError, match="shape"):
        checks.assert_grad_matches(lambda x: x, inputs, "x", torch.ones(3))


# --------------------------------------------------------------- assert_no_grad


def ppo_like(new, old, adv):
    ratio = (new - old).exp()
    return -(ratio * adv).mean(), {"ratio": ratio.detach(), "n": 3}


def test_assert_no_grad_passes_when_blocked_inputs_are_constants():
    inputs = {"new": torch.randn(4), "old": torch.randn(4), "adv": torch.randn(4)}
    checks.assert_no_grad(lambda new, old, adv: ppo_like(new, old.detach(), adv.detach()), inputs, ["old", "adv"])
    checks.assert_no_grad(lambda new, old, adv: torch.zeros(3), inputs, "old")  # nothing requires grad
    checks.assert_no_grad(lambda new, old, adv: (new * old.detach()).sum().item(), inputs, "old")


def test_assert_no_grad_catches_missing_detach():
    inputs = {"new": torch.randn(4), "old": torch.randn(4), "adv": torch.randn(4)}
    message = fails(checks.assert_no_grad, ppo_like, inputs, ["old"], name="ppo_loss")
    assert "gradient of `ppo_loss` reached `old`" in message and ".detach()" in message and "old[0]" in message
    message = fails(checks.assert_no_grad, lambda new, old, adv: ppo_like(new, old.detach(), adv), inputs,
                    ["old", "adv"])
    assert "reached `adv`" in message
    # a leak through a secondary output counts too
    leaky = lambda new, old, adv: (new.sum(), {"ratio": (new - old).exp()})  # noqa: E731
    assert "reached `old`" in fails(checks.assert_no_grad, leaky, inputs, "old")
    checks.assert_no_grad(leaky, inputs, "old", output_index=0)
    assert "Liar" in fails(checks.assert_no_grad, lambda new, old, adv: Liar(), inputs, "old")


# ----------------------------------------------------------- assert_no_inplace


def test_assert_no_inplace_passes_out_of_place_functions():
    x = torch.tensor([1.0, float("nan"), 3.0])
    checks.assert_no_inplace(lambda x, k: (x + k).clamp(min=0), {"x": x, "k": 1})
    checks.assert_no_inplace(lambda x: x, {"x": x})  # returning the input itself is not a modification


def test_assert_no_inplace_catches_modifications():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    before = x.clone()

    def add_one(x):
        x.add_(1)
        return x

    message = fails(checks.assert_no_inplace, add_one, {"x": x})
    assert "`add_one` modified its input `x` in place: x[0, 0] was 1, now 2" in message and "x + 1" in message
    assert torch.equal(x, before) and x._version == 0  # the caller's tensor was never handed out

    def same_values(x):
        x[0, 0] = x[0, 0].item()
        return x

    assert "version counter 0 -> 1" in fails(checks.assert_no_inplace, same_values, {"x": x})

    def zero_masked(batch, mask):
        batch["ids"].masked_fill_(mask, 0)
        return batch["ids"]

    inputs = {"batch": {"ids": torch.tensor([5, 6, 7])}, "mask": torch.tensor([False, True, False])}
    message = fails(checks.assert_no_inplace, zero_masked, inputs)
    assert "batch['ids'][1] was 6, now 0" in message

    def grow(x):
        x.resize_(5)
        return x

    assert "(5,)" in fails(checks.assert_no_inplace, grow, {"x": torch.zeros(2)})


# ----------------------------------------------------------------------- quiet


def test_checks_write_nothing_to_stderr_and_never_warn(capfd):
    x32 = torch.randn(2, 3)  # float32 inputs would make torch.autograd.gradcheck warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.gradcheck(lambda x: x.exp() * 2, {"x": x32})
        checks.assert_grad_matches(lambda x: x.exp(), {"x": x32}, "x", lambda i: i["x"].exp())
        checks.assert_no_grad(lambda x, y: x * y.detach(), {"x": x32, "y": x32}, ["y"])
        checks.assert_no_inplace(lambda x: x * 2, {"x": x32})
        checks.assert_close(x32.clone(), x32)
        for wrong in (
            lambda: checks.gradcheck(lambda x: HalfSquare.apply(x), {"x": x32}),
            lambda: checks.gradcheck(lambda x: x.detach(), {"x": x32}),
            lambda: checks.assert_no_grad(lambda x, y: x * y, {"x": x32, "y": x32}, ["y"]),
            lambda: checks.assert_close(x32 + 1, x32),
            lambda: checks.assert_equal([True], [1]),
        ):
            with pytest.raises(AssertionError):
                wrong()
    captured = capfd.readouterr()
    assert [str(w.message) for w in caught] == []
    assert captured.err == ""
    assert captured.out == ""
