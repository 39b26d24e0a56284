"""Notebook 06 (GAE and the KL-shaped reward): the reference code against independent oracles.

Oracles are plain Python loops over the masked positions of each row, closed forms
(reward-to-go, exact expectations over a categorical) and torch.autograd.gradcheck.
Random cases come from seeded generators (hypothesis is not installed), covering
variable-length rows, left/right/both-sided padding, masks with holes, all-zero rows,
one-token rows, float32 and float64.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

from cases import DTYPES, TOL, cases, close, random_mask
from cells import failing, graded_cells, run_silently, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "06_gae" / "06_gae.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


# ----------------------------------------------------------------------------- random cases


def garbage_on_padding(x: torch.Tensor, mask: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    return x.masked_fill(~mask.bool(), value)


# ----------------------------------------------------------------------------- oracles


def selected(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return [float(x[tuple(idx)]) for idx in mask.bool().nonzero().tolist()]


def positions(mask_row: torch.Tensor) -> list[int]:
    return [t for t in range(mask_row.shape[0]) if bool(mask_row[t])]


def td_oracle(r, v, mask, gamma):
    B, T = r.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        pos = positions(mask[b])
        for i, t in enumerate(pos):
            v_next = float(v[b, pos[i + 1]]) if i + 1 < len(pos) else 0.0
            out[b, t] = float(r[b, t]) + gamma * v_next - float(v[b, t])
    return out


def gae_oracle(r, v, mask, gamma, lam):
    """A_t = sum_k (gamma*lam)^k delta_{t+k} over the row's masked positions (double loop, no recursion)."""
    delta = td_oracle(r, v, mask, gamma)
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    ret = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        pos = positions(mask[b])
        for i, t in enumerate(pos):
            adv[b, t] = sum((gamma * lam) ** k * float(delta[b, pos[i + k]]) for k in range(len(pos) - i))
            ret[b, t] = adv[b, t] + float(v[b, t])
    return adv, ret


def rewards_oracle(scores, lp, ref, mask, beta):
    B, T = lp.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        pos = positions(mask[b])
        for t in pos:
            out[b, t] = -beta * (float(lp[b, t]) - float(ref[b, t]))
        if pos:
            out[b, pos[-1]] += float(scores[b])
    return out


# ----------------------------------------------------------------------------- contract for notebook 07


def test_exported_module_has_the_contract():
    from minirlhf import gae

    expected = {
        "masked_mean": ["x", "mask", "dim"],
        "masked_var": ["x", "mask", "unbiased"],
        "masked_whiten": ["x", "mask", "shift_mean"],
        "kl_estimate": ["logprobs", "ref_logprobs", "kind"],
        "per_token_rewards": ["scores", "logprobs", "ref_logprobs", "mask", "kl_coef"],
        "td_residuals": ["rewards", "values", "mask", "gamma"],
        "compute_gae": ["rewards", "values", "mask", "gamma", "lam"],
    }
    for name, params in expected.items():
        fn = getattr(gae, name)
        assert list(inspect.signature(fn).parameters) == params, name
    sig = inspect.signature(gae.masked_mean).parameters
    assert sig["dim"].default is None
    assert inspect.signature(gae.masked_var).parameters["unbiased"].default is True
    assert inspect.signature(gae.masked_whiten).parameters["shift_mean"].default is True
    assert inspect.signature(gae.kl_estimate).parameters["kind"].default == "k1"


# ----------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_mean_var_match_the_selected_entries(nb, dtype):
    for gen, B, T, mask in cases(1, 40):
        if not mask.any():
            continue
        x = (torch.randn(B, T, generator=gen) * 3 + 1).to(dtype)
        xg = garbage_on_padding(x, mask)
        vals = selected(x, mask)
        mu = sum(vals) / len(vals)
        close(nb.masked_mean(xg, mask), mu, dtype, "masked_mean")
        close(nb.masked_mean(xg, mask.to(dtype)), mu, dtype, "masked_mean, float mask")
        ss = sum((v - mu) ** 2 for v in vals)
        close(nb.masked_var(xg, mask, unbiased=False), ss / len(vals), dtype, "masked_var biased")
        if len(vals) >= 2:
            close(nb.masked_var(xg, mask.int()), ss / (len(vals) - 1), dtype, "masked_var")
        for dim in (0, 1, -1, -2):
            d = dim % 2
            exp = []
            for i in range(x.shape[1 - d]):
                xs, ms = (x[:, i], mask[:, i]) if d == 0 else (x[i], mask[i])
                sel = [float(v) for v, m in zip(xs, ms) if m]
                exp.append(sum(sel) / len(sel) if sel else 0.0)
            close(nb.masked_mean(xg, mask, dim=dim), exp, dtype, f"masked_mean dim={dim}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_whiten_properties(nb, dtype):
    for gen, B, T, mask in cases(2, 30):
        if int(mask.sum()) < 2:
            continue
        x = (torch.randn(B, T, generator=gen) * 4 - 2).to(dtype)
        xg = garbage_on_padding(x, mask, float("inf"))
        vals = selected(x, mask)
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) + 1e-8)
        exp = torch.zeros(B, T, dtype=torch.float64)
        for b, t in mask.nonzero().tolist():
            exp[b, t] = (float(x[b, t]) - mu) / sd
        close(nb.masked_whiten(xg, mask), exp, dtype, "masked_whiten")
        close(nb.masked_whiten(xg, mask, shift_mean=False), torch.where(mask, exp + mu, 0.0), dtype,
              "masked_whiten(shift_mean=False)")
        # Invariant to a positive affine change of the input (up to the 1e-8 in the denominator).
        w = nb.masked_whiten(x, mask).double()
        w2 = nb.masked_whiten(x * 3 + 5, mask).double()
        torch.testing.assert_close(w2, w, atol=1e-4, rtol=1e-4)


def test_masked_stats_edge_cases(nb):
    x = torch.randn(2, 3)
    empty = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        nb.masked_mean(x, empty)
    close(nb.masked_mean(x, empty, dim=1), torch.zeros(2), torch.float32, "masked_mean of empty rows")
    for unbiased in (True, False):
        with pytest.raises(ValueError):
            nb.masked_var(x, empty, unbiased=unbiased)
    one = torch.tensor([[0, 0, 1], [0, 0, 0]])
    with pytest.raises(ValueError):
        nb.masked_var(x, one)
    close(nb.masked_var(x, one, unbiased=False), torch.tensor(0.0), torch.float32, "biased var of one entry")
    with pytest.raises(ValueError):
        nb.masked_whiten(x, empty)
    with pytest.raises(ValueError):
        nb.masked_mean(x, torch.ones(3, 2))
    with pytest.raises(TypeError):
        nb.masked_mean(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3))
    # Huge values: no overflow in float32 for the mean; inf on padding ignored.
    big = torch.tensor([[1e37, 2e37, float("inf")]])
    m = torch.tensor([[1, 1, 0]])
    close(nb.masked_mean(big, m), torch.tensor(1.5e37), torch.float32, "masked_mean of huge values")


def test_masked_stats_gradients(nb):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1]])
    for fn in (
        lambda x: nb.masked_mean(x, mask),
        lambda x: nb.masked_mean(x, mask, dim=1),
        lambda x: nb.masked_mean(x, mask, dim=0),
        lambda x: nb.masked_var(x, mask),
        lambda x: nb.masked_var(x, mask, unbiased=False),
        lambda x: nb.masked_whiten(x, mask),
        lambda x: nb.masked_whiten(x, mask, shift_mean=False),
    ):
        assert torch.autograd.gradcheck(fn, (x,))
    # Padding gets exactly zero gradient, even for whiten (through mean and var).
    (g,) = torch.autograd.grad((nb.masked_whiten(x, mask) * torch.randn(3, 4, dtype=torch.float64)).sum(), x)
    assert (g[~mask.bool()] == 0).all()
    # masked_mean's gradient is m / n.
    (g,) = torch.autograd.grad(nb.masked_mean(x, mask), x)
    torch.testing.assert_close(g, mask.double() / mask.sum())


# ----------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_estimate_values(nb, dtype):
    gen = torch.Generator().manual_seed(4)
    lp = (-torch.rand(4, 9, generator=gen) * 5).to(dtype)
    ref = (-torch.rand(4, 9, generator=gen) * 5).to(dtype)
    formulas = {
        "k1": lambda l: l,
        "k2": lambda l: 0.5 * l * l,
        "k3": lambda l: math.exp(-l) - 1 + l,
    }
    for kind, f in formulas.items():
        exp = [[f(float(a) - float(b)) for a, b in zip(ra, rb)] for ra, rb in zip(lp, ref)]
        close(nb.kl_estimate(lp, ref, kind), exp, dtype, f"kl_estimate {kind}")
    close(nb.kl_estimate(lp, ref), lp.double() - ref.double(), dtype, "kl_estimate default")
    for kind in ("k2", "k3"):
        assert (nb.kl_estimate(lp, ref, kind) >= 0).all(), kind
    with pytest.raises(ValueError):
        nb.kl_estimate(lp, ref, "k5")
    with pytest.raises(ValueError):
        nb.kl_estimate(lp, ref[:, :3])


def test_kl_estimators_exact_expectations(nb):
    """Weighting each token by pi(y): E[k1] = E[k3] = KL(pi || ref) exactly; k2 differs (biased)."""
    gen = torch.Generator().manual_seed(5)
    for shift in (0.1, 1.0, 3.0):
        base = torch.randn(30, generator=gen, dtype=torch.float64)
        logp = torch.log_softmax(base + shift * torch.randn(30, generator=gen, dtype=torch.float64), 0)
        logr = torch.log_softmax(base, 0)
        p = logp.exp()
        true_kl = sum(float(pi) * (float(a) - float(b)) for pi, a, b in zip(p, logp, logr))
        for kind in ("k1", "k3"):
            est = float((p * nb.kl_estimate(logp[None], logr[None], kind)[0]).sum())
            assert est == pytest.approx(true_kl, rel=1e-9, abs=1e-12), kind
    k2 = float((p * nb.kl_estimate(logp[None], logr[None], "k2")[0]).sum())
    assert abs(k2 - true_kl) > 1e-3  # at shift 3 the biased estimator is visibly off


def test_kl_estimate_small_ratios_and_gradients(nb):
    tiny = torch.tensor([[1e-10, -1e-7, 3e-5]], dtype=torch.float64)
    k3 = nb.kl_estimate(tiny, torch.zeros_like(tiny), "k3")
    torch.testing.assert_close(k3, tiny.square() / 2 - tiny.pow(3) / 6, rtol=1e-6, atol=1e-30)
    gen = torch.Generator().manual_seed(6)
    lp = (-torch.rand(2, 5, dtype=torch.float64, generator=gen) * 3).requires_grad_()
    ref = (-torch.rand(2, 5, dtype=torch.float64, generator=gen) * 3).requires_grad_()
    for kind in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda a, b: nb.kl_estimate(a, b, kind), (lp, ref))


# ----------------------------------------------------------------------------- per-token rewards


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_token_rewards_matches_loop(nb, dtype):
    for gen, B, T, mask in cases(7, 40):
        lp = (-torch.rand(B, T, generator=gen) * 4).to(dtype)
        ref = (-torch.rand(B, T, generator=gen) * 4).to(dtype)
        scores = torch.randn(B, generator=gen).to(dtype)
        beta = float(torch.rand(1, generator=gen))
        got = nb.per_token_rewards(scores, garbage_on_padding(lp, mask, -math.inf), ref, mask, beta)
        close(got, rewards_oracle(scores, lp, ref, mask, beta), dtype, f"per_token_rewards mask={mask.int().tolist()}")
        # Closed form: a row's rewards sum to score - beta * (sequence log-ratio); empty rows sum to 0.
        for b in range(B):
            if mask[b].any():
                seq = sum(float(lp[b, t]) - float(ref[b, t]) for t in positions(mask[b]))
                assert float(got[b].sum()) == pytest.approx(float(scores[b]) - beta * seq, abs=1e-4)
            else:
                assert (got[b] == 0).all()
        assert not got.requires_grad


def test_per_token_rewards_is_detached_and_pure(nb):
    scores = torch.randn(3, dtype=torch.float64, requires_grad=True)
    lp = -torch.rand(3, 4, dtype=torch.float64).requires_grad_()
    ref = -torch.rand(3, 4, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    copies = [t.detach().clone() for t in (scores, lp, ref, mask)]
    out = nb.per_token_rewards(scores, lp, ref, mask, 0.2)
    assert not out.requires_grad and out.grad_fn is None
    for before, after in zip(copies, (scores, lp, ref, mask)):
        assert torch.equal(before, after.detach())
    with pytest.raises(ValueError):
        nb.per_token_rewards(scores[:2], lp, ref, mask, 0.2)


# ----------------------------------------------------------------------------- TD residuals and GAE


@pytest.mark.parametrize("dtype", DTYPES)
def test_td_residuals_matches_loop(nb, dtype):
    gammas = [0.0, 0.5, 0.9, 0.99, 1.0]
    for i, (gen, B, T, mask) in enumerate(cases(8, 40)):
        r = torch.randn(B, T, generator=gen).to(dtype)
        v = torch.randn(B, T, generator=gen).to(dtype)
        g = gammas[i % len(gammas)]
        got = nb.td_residuals(r, garbage_on_padding(v, mask), mask, g)
        close(got, td_oracle(r, v, mask, g), dtype, f"td_residuals gamma={g} mask={mask.int().tolist()}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_compute_gae_matches_loop(nb, dtype):
    gen_gl = torch.Generator().manual_seed(9)
    for gen, B, T, mask in cases(10, 60):
        gamma = float(torch.rand(1, generator=gen_gl))
        lam = float(torch.rand(1, generator=gen_gl))
        r = torch.randn(B, T, generator=gen).to(dtype)
        v = torch.randn(B, T, generator=gen).to(dtype)
        adv, ret = nb.compute_gae(garbage_on_padding(r, mask), garbage_on_padding(v, mask), mask.float(), gamma, lam)
        e_adv, e_ret = gae_oracle(r, v, mask, gamma, lam)
        what = f"gamma={gamma:.3f} lam={lam:.3f} mask={mask.int().tolist()}"
        close(adv, e_adv, dtype, f"advantages {what}")
        close(ret, e_ret, dtype, f"returns {what}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_compute_gae_closed_forms(nb, dtype):
    for gen, B, T, mask in cases(11, 30):
        r = torch.randn(B, T, generator=gen).to(dtype)
        v = torch.randn(B, T, generator=gen).to(dtype)
        gamma = 0.93
        # lam = 0: the TD residuals.
        adv0, _ = nb.compute_gae(r, v, mask, gamma, 0.0)
        close(adv0, td_oracle(r, v, mask, gamma), dtype, "compute_gae(lam=0)")
        close(adv0, nb.td_residuals(r, v, mask, gamma).double(), dtype, "compute_gae(lam=0) vs td_residuals")
        # lam = gamma = 1: reward-to-go minus V; returns = reward-to-go.
        adv1, ret1 = nb.compute_gae(r, v, mask, 1.0, 1.0)
        rtg = torch.zeros(B, T, dtype=torch.float64)
        for b in range(B):
            pos = positions(mask[b])
            for i, t in enumerate(pos):
                rtg[b, t] = sum(float(r[b, u]) for u in pos[i:])
        close(adv1, torch.where(mask, rtg - v.double(), 0.0), dtype, "compute_gae(gamma=lam=1)")
        close(ret1, rtg, dtype, "returns(gamma=lam=1)")
        # lam = 1, any gamma: discounted reward-to-go minus V.
        adv_g, _ = nb.compute_gae(r, v, mask, gamma, 1.0)
        disc = torch.zeros(B, T, dtype=torch.float64)
        for b in range(B):
            pos = positions(mask[b])
            for i, t in enumerate(pos):
                disc[b, t] = sum(gamma ** k * float(r[b, u]) for k, u in enumerate(pos[i:])) - float(v[b, t])
        close(adv_g, disc, dtype, "compute_gae(lam=1) vs discounted reward-to-go - V")


def test_shifting_a_row_shifts_every_output(nb):
    """Left vs right padding (and any offset): a row's content at offset s gives outputs at offset s."""
    gen = torch.Generator().manual_seed(12)
    T = 10
    for length in (1, 2, 5, 10):
        r = torch.randn(length, dtype=torch.float64, generator=gen)
        v = torch.randn(length, dtype=torch.float64, generator=gen)
        lp = -torch.rand(length, dtype=torch.float64, generator=gen)
        ref = -torch.rand(length, dtype=torch.float64, generator=gen)
        outs = []
        for s in range(T - length + 1):
            def place(x, fill=0.0):
                row = torch.full((1, T), fill, dtype=torch.float64)
                row[0, s:s + length] = x
                return row
            mask = place(torch.ones(length)).bool()
            adv, ret = nb.compute_gae(place(r, 3.0), place(v, -7.0), mask, 0.97, 0.9)
            parts = [
                adv, ret,
                nb.td_residuals(place(r, 3.0), place(v, -7.0), mask, 0.97),
                nb.per_token_rewards(torch.tensor([1.5], dtype=torch.float64), place(lp, -math.inf), place(ref), mask, 0.3),
            ]
            if length >= 2:
                parts.append(nb.masked_whiten(place(r, 1e6), mask))
            for p in parts:
                assert (p[0, :s] == 0).all() and (p[0, s + length:] == 0).all(), "padding must be 0"
            outs.append([p[0, s:s + length] for p in parts])
        for shifted in outs[1:]:
            for a, b in zip(outs[0], shifted):
                torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_rows_are_independent(nb):
    """Permuting the batch permutes the per-row outputs (no leakage across rows)."""
    gen = torch.Generator().manual_seed(13)
    B, T = 6, 9
    mask = random_mask(gen, B, T, "any")
    r, v = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    perm = torch.randperm(B, generator=gen)
    adv, ret = nb.compute_gae(r, v, mask, 0.99, 0.95)
    adv_p, ret_p = nb.compute_gae(r[perm], v[perm], mask[perm], 0.99, 0.95)
    torch.testing.assert_close(adv_p, adv[perm])
    torch.testing.assert_close(ret_p, ret[perm])


def test_compute_gae_edge_cases(nb):
    # All-zero rows and one-token rows.
    r = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    v = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 1]])
    adv, ret = nb.compute_gae(r, v, mask, 0.9, 0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 5.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 6.0]]))
    adv, ret = nb.compute_gae(r, v, torch.zeros(3, 3), 1.0, 1.0)
    assert (adv == 0).all() and (ret == 0).all()
    # Huge values in float32: no overflow; inf/nan on padding never leak.
    big = torch.full((2, 6), 1e37)
    adv, ret = nb.compute_gae(big, big, torch.ones(2, 6), 1.0, 1.0)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    torch.testing.assert_close(ret[0], torch.tensor([6e37, 5e37, 4e37, 3e37, 2e37, 1e37]))
    m = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    junk = torch.tensor([[1.0, 1.0, math.inf, math.nan], [math.nan, -math.inf, 1.0, 1.0]])
    adv, ret = nb.compute_gae(junk, junk, m, 1.0, 0.95)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    for bad in ((-0.1, 0.5), (1.1, 0.5), (0.5, -0.1), (0.5, 1.5)):
        with pytest.raises(ValueError):
            nb.compute_gae(r, v, mask, *bad)
    with pytest.raises(ValueError):
        nb.compute_gae(r, v[:, :2], mask, 1.0, 1.0)


def test_compute_gae_is_detached_and_pure(nb):
    gen = torch.Generator().manual_seed(14)
    r = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = random_mask(gen, 3, 5, "any")
    r0, v0 = r.detach().clone(), v.detach().clone()
    versions = (r._version, v._version)
    adv, ret = nb.compute_gae(r, v, mask, 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert adv.grad_fn is None and ret.grad_fn is None
    assert torch.equal(r.detach(), r0) and torch.equal(v.detach(), v0) and (r._version, v._version) == versions
    x = torch.randn(3, 5, generator=gen)
    x0, ver = x.clone(), x._version
    nb.masked_whiten(x, torch.ones(3, 5))
    assert torch.equal(x, x0) and x._version == ver


# ----------------------------------------------------------------------------- the test cells' bar
#
# The test cells themselves are checked from both sides: the reference passes all of them; each plausible
# wrong implementation fails the cell that grades its math; and a correct implementation without any input
# checks (torch's own errors on bad shapes) keeps every point except those of the `_errors` cells.


def _zero(x):
    return torch.zeros((), dtype=x.dtype)


# ------------------------------------------------------------------ correct math, no input checks at all


def nv_masked_mean(x, mask, dim=None):
    m = mask.bool()
    picked = torch.where(m, x, _zero(x))
    if dim is None:
        return picked.sum() / m.sum()
    return picked.sum(dim) / m.sum(dim).clamp_min(1)


def nv_masked_var(x, mask, unbiased=True):
    m = mask.bool()
    n = m.sum()
    centred = torch.where(m, x - nv_masked_mean(x, m), _zero(x))
    return centred.square().sum() / (n - 1 if unbiased else n)


def nv_masked_whiten(x, mask, shift_mean=True):
    m = mask.bool()
    mu, var = nv_masked_mean(x, m), nv_masked_var(x, m)
    y = (x - mu) / torch.sqrt(var + 1e-8)
    if not shift_mean:
        y = y + mu
    return torch.where(m, y, _zero(x))


def nv_kl_estimate(logprobs, ref_logprobs, kind="k1"):
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return log_ratio.square() / 2
    return torch.expm1(-log_ratio) + log_ratio


def nv_per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    with torch.no_grad():
        m = mask.bool()
        rewards = torch.where(m, -kl_coef * (logprobs - ref_logprobs), _zero(logprobs))
        for b in range(m.shape[0]):
            where = m[b].nonzero()
            if len(where):
                rewards[b, where[-1, 0]] += scores[b]
    return rewards


def nv_td_residuals(rewards, values, mask, gamma):
    m = mask.bool()
    v = torch.where(m, values, _zero(values))
    next_v, columns = torch.zeros_like(v[:, 0]), []
    for t in reversed(range(m.shape[1])):
        columns.append(torch.where(m[:, t], rewards[:, t] + gamma * next_v - v[:, t], _zero(rewards)))
        next_v = torch.where(m[:, t], v[:, t], next_v)
    return torch.stack(columns[::-1], dim=1)


def nv_compute_gae(rewards, values, mask, gamma, lam):
    with torch.no_grad():
        m = mask.bool()
        v = torch.where(m, values, _zero(values))
        delta = nv_td_residuals(torch.where(m, rewards, _zero(rewards)), v, m, gamma)
        adv, carry = torch.zeros_like(delta), torch.zeros_like(delta[:, 0])
        for t in reversed(range(m.shape[1])):
            carry = torch.where(m[:, t], delta[:, t] + gamma * lam * carry, carry)
            adv[:, t] = torch.where(m[:, t], carry, _zero(carry))
        return adv, torch.where(m, adv + v, _zero(v))


NO_VALIDATION = {"masked_mean": nv_masked_mean, "masked_var": nv_masked_var, "masked_whiten": nv_masked_whiten,
                 "kl_estimate": nv_kl_estimate, "per_token_rewards": nv_per_token_rewards,
                 "td_residuals": nv_td_residuals, "compute_gae": nv_compute_gae}


# ------------------------------------------------------------------ plausible wrong math


def mean_times_mask(x, mask, dim=None):  # 0 * inf = nan leaks from the padding
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum() if dim is None else (x * m).sum(dim) / m.sum(dim).clamp_min(1)


def mean_without_mask(x, mask, dim=None):
    return x.mean() if dim is None else x.mean(dim)


def mean_slices_over_total_count(x, mask, dim=None):
    m = mask.bool()
    picked = torch.where(m, x, _zero(x))
    return picked.sum() / m.sum() if dim is None else picked.sum(dim) / m.sum()


def mean_empty_slice_nan(x, mask, dim=None):
    m = mask.bool()
    picked = torch.where(m, x, _zero(x))
    return picked.sum() / m.sum() if dim is None else picked.sum(dim) / m.sum(dim)


def mean_of_row_means(x, mask, dim=None):  # every response weighs the same, whatever its length
    if dim is None:
        return nv_masked_mean(x, mask, dim=-1).mean()
    return nv_masked_mean(x, mask, dim)


def var_always_biased(x, mask, unbiased=True):
    return nv_masked_var(x, mask, unbiased=False)


def var_always_unbiased(x, mask, unbiased=True):
    return nv_masked_var(x, mask, unbiased=True)


def var_around_the_unmasked_mean(x, mask, unbiased=True):
    m = mask.bool()
    n = m.sum()
    centred = torch.where(m, x - x.mean(), _zero(x))
    return centred.square().sum() / (n - 1 if unbiased else n)


def var_returns_std(x, mask, unbiased=True):
    return nv_masked_var(x, mask, unbiased).sqrt()


def whiten_biased(x, mask, shift_mean=True):
    m = mask.bool()
    mu, var = nv_masked_mean(x, m), nv_masked_var(x, m, unbiased=False)
    y = (x - mu) / torch.sqrt(var + 1e-8) + (0 if shift_mean else mu)
    return torch.where(m, y, _zero(x))


def whiten_keeps_padding(x, mask, shift_mean=True):
    m = mask.bool()
    mu, var = nv_masked_mean(x, m), nv_masked_var(x, m)
    return (x - mu) / torch.sqrt(var + 1e-8) + (0 if shift_mean else mu)


def whiten_ignores_shift_mean(x, mask, shift_mean=True):
    return nv_masked_whiten(x, mask, shift_mean=True)


def whiten_detached_stats(x, mask, shift_mean=True):
    m = mask.bool()
    mu, var = nv_masked_mean(x.detach(), m), nv_masked_var(x.detach(), m)
    y = (x - mu) / torch.sqrt(var + 1e-8) + (0 if shift_mean else mu)
    return torch.where(m, y, _zero(x))


def whiten_without_epsilon(x, mask, shift_mean=True):
    m = mask.bool()
    mu, var = nv_masked_mean(x, m), nv_masked_var(x, m)
    y = (x - mu) / torch.sqrt(var) + (0 if shift_mean else mu)
    return torch.where(m, y, _zero(x))


def _kl_with(k3=None, k2=None, k1=None):
    def kl_estimate(logprobs, ref_logprobs, kind="k1"):
        l = logprobs - ref_logprobs
        if kind == "k1":
            return (k1 or (lambda l: l))(l)
        if kind == "k2":
            return (k2 or (lambda l: l.square() / 2))(l)
        return (k3 or (lambda l: torch.expm1(-l) + l))(l)
    return kl_estimate


def _rewards_with(*, last=None, sign=-1.0, detach=True):
    """per_token_rewards with the score placed at ``last(mask) -> [B]`` and the penalty ``sign * beta * l``."""
    def per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
        m = mask.bool()
        with torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
            rewards = torch.where(m, sign * kl_coef * (logprobs - ref_logprobs), _zero(logprobs))
            idx = last(m)
            rows = (m.any(1)).nonzero().flatten()
            bonus = torch.zeros_like(rewards)
            bonus[rows, idx[rows]] = scores[rows].to(rewards.dtype)
            return rewards + bonus
    return per_token_rewards


def _last_by_max(m):
    return torch.where(m, torch.arange(m.shape[1]).expand_as(m), -1).amax(1)


def _td_with(next_value):
    """td_residuals with V_{t+1} = next_value(v, m) (a [B, T] tensor)."""
    def td_residuals(rewards, values, mask, gamma):
        m = mask.bool()
        return torch.where(m, rewards + gamma * next_value(values, m) - values, _zero(rewards))
    return td_residuals


def _next_column(v, m):  # index t + 1, whatever the mask says there
    return torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)


def _next_column_or_self(v, m):  # no terminal 0: the last token bootstraps from its own value
    nxt = _next_column(v, m)
    is_last = m & ~torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1)
    return torch.where(is_last, v, nxt)


def td_swapped_values(rewards, values, mask, gamma):  # r + gamma V_t - V_{t+1}
    m = mask.bool()
    v = torch.where(m, values, _zero(values))
    next_v = nv_td_residuals(torch.zeros_like(rewards), v, m, 1.0) + v  # V_{t+1}, 0 after the last token
    return torch.where(m, rewards + gamma * v - next_v, _zero(rewards))


def td_discounts_the_reward(rewards, values, mask, gamma):
    return nv_td_residuals(gamma * rewards, values, mask, gamma)


def _gae_with(*, decay=lambda gamma, lam: gamma * lam, skip_last=False, carry_through_padding=True,
              plus_values=True, mask_returns=True, no_grad=True, forward=False):
    def compute_gae(rewards, values, mask, gamma, lam):
        with torch.set_grad_enabled(not no_grad and torch.is_grad_enabled()):
            m = mask.bool()
            v = torch.where(m, values, _zero(values))
            delta = nv_td_residuals(torch.where(m, rewards, _zero(rewards)), v, m, gamma)
            T = m.shape[1]
            order = range(T) if forward else reversed(range(T - 1 if skip_last else T))
            adv, carry = torch.zeros_like(delta), torch.zeros_like(delta[:, 0])
            for t in order:
                fresh = delta[:, t] + decay(gamma, lam) * carry
                carry = torch.where(m[:, t], fresh, carry if carry_through_padding else torch.zeros_like(carry))
                adv[:, t] = torch.where(m[:, t], carry, _zero(carry))
            ret = adv + (values if plus_values else 0)
            return adv, (torch.where(m, ret, _zero(ret)) if mask_returns else ret)
    return compute_gae


WRONG_VARIANTS = [
    ("masked_mean multiplies by the mask (0 * inf = nan from padding)", {"masked_mean": mean_times_mask},
     "test_masked_mean"),
    ("masked_mean ignores the mask", {"masked_mean": mean_without_mask}, "test_masked_mean"),
    ("masked_mean(dim) divides every slice by the total count", {"masked_mean": mean_slices_over_total_count},
     "test_masked_mean"),
    ("masked_mean(dim) gives nan for an empty slice", {"masked_mean": mean_empty_slice_nan}, "test_masked_mean"),
    ("masked_mean = the mean of the row means", {"masked_mean": mean_of_row_means}, "test_masked_mean"),
    ("masked_var always biased", {"masked_var": var_always_biased}, "test_masked_var"),
    ("masked_var always unbiased", {"masked_var": var_always_unbiased}, "test_masked_var"),
    ("masked_var centred on the mean of all entries", {"masked_var": var_around_the_unmasked_mean},
     "test_masked_var"),
    ("masked_var returns the standard deviation", {"masked_var": var_returns_std}, "test_masked_var"),
    ("masked_whiten with the biased variance", {"masked_whiten": whiten_biased}, "test_masked_whiten"),
    ("masked_whiten leaves the padding non-zero", {"masked_whiten": whiten_keeps_padding}, "test_masked_whiten"),
    ("masked_whiten ignores shift_mean", {"masked_whiten": whiten_ignores_shift_mean}, "test_masked_whiten"),
    ("masked_whiten detaches mean and variance", {"masked_whiten": whiten_detached_stats}, "test_masked_whiten"),
    ("masked_whiten without the 1e-8", {"masked_whiten": whiten_without_epsilon}, "test_masked_whiten"),
    ("k3 in the other direction, e^l - 1 - l", {"kl_estimate": _kl_with(k3=lambda l: torch.expm1(l) - l)},
     "test_kl_estimate"),
    ("k3 as exp(-l) - 1 + l (no expm1)", {"kl_estimate": _kl_with(k3=lambda l: torch.exp(-l) - 1 + l)},
     "test_kl_estimate"),
    ("k2 without the 1/2", {"kl_estimate": _kl_with(k2=lambda l: l.square())}, "test_kl_estimate"),
    ("k1 with the sign flipped", {"kl_estimate": _kl_with(k1=lambda l: -l)}, "test_kl_estimate"),
    ("score on the last column", {"per_token_rewards": _rewards_with(last=lambda m: torch.full((m.shape[0],), m.shape[1] - 1))},
     "test_per_token_rewards"),
    ("score at mask.sum() - 1", {"per_token_rewards": _rewards_with(last=lambda m: m.sum(1) - 1)},
     "test_per_token_rewards"),
    ("score on the first response token", {"per_token_rewards": _rewards_with(last=lambda m: m.long().argmax(1))},
     "test_per_token_rewards"),
    ("KL penalty with the sign flipped", {"per_token_rewards": _rewards_with(last=_last_by_max, sign=1.0)},
     "test_per_token_rewards"),
    ("rewards not detached", {"per_token_rewards": _rewards_with(last=_last_by_max, detach=False)},
     "test_per_token_rewards"),
    ("V_{t+1} from column t + 1, whatever the mask", {"td_residuals": _td_with(_next_column)}, "test_td_residuals"),
    ("no terminal 0: the last token bootstraps from its own value", {"td_residuals": _td_with(_next_column_or_self)},
     "test_td_residuals"),
    ("r + gamma V_t - V_{t+1}", {"td_residuals": td_swapped_values}, "test_td_residuals"),
    ("the reward discounted too", {"td_residuals": td_discounts_the_reward}, "test_td_residuals"),
    ("recursion decays with gamma, not gamma * lam", {"compute_gae": _gae_with(decay=lambda g, l: g)}, "test_compute_gae"),
    ("recursion decays with lam, not gamma * lam", {"compute_gae": _gae_with(decay=lambda g, l: l)}, "test_compute_gae"),
    ("off by one: the loop skips the last position", {"compute_gae": _gae_with(skip_last=True)}, "test_compute_gae"),
    ("padding resets the carry (wrong for masks with holes)", {"compute_gae": _gae_with(carry_through_padding=False)},
     "test_compute_gae"),
    ("returns = advantages (V not added)", {"compute_gae": _gae_with(plus_values=False)}, "test_compute_gae"),
    ("returns not zeroed on padding", {"compute_gae": _gae_with(mask_returns=False)}, "test_compute_gae"),
    ("advantages keep autograd history", {"compute_gae": _gae_with(no_grad=False)}, "test_compute_gae"),
    ("recursion runs forward in time", {"compute_gae": _gae_with(forward=True)}, "test_compute_gae"),
]


def test_reference_passes_every_test_cell_silently(nb):
    results, stderr, warned = run_silently(NOTEBOOK, nb)
    assert failing(results) == {}
    assert stderr == "" and not warned, (stderr, warned)


def test_no_validation_versions_are_correct_math(nb):
    """The no-check versions used below agree with the reference on valid inputs (else the bar means nothing)."""
    for gen, B, T, mask in cases(15, 30):
        x = torch.randn(B, T, generator=gen, dtype=torch.float64)
        v = torch.randn(B, T, generator=gen, dtype=torch.float64)
        lp, ref = -torch.rand(B, T, generator=gen, dtype=torch.float64), -torch.rand(B, T, generator=gen, dtype=torch.float64)
        scores = torch.randn(B, generator=gen, dtype=torch.float64)
        if int(mask.sum()) >= 2:
            torch.testing.assert_close(nv_masked_whiten(x, mask), nb.masked_whiten(x, mask))
            torch.testing.assert_close(nv_masked_var(x, mask), nb.masked_var(x, mask))
        torch.testing.assert_close(nv_masked_mean(x, mask, dim=1), nb.masked_mean(x, mask, dim=1))
        torch.testing.assert_close(nv_per_token_rewards(scores, lp, ref, mask, 0.3), nb.per_token_rewards(scores, lp, ref, mask, 0.3))
        for a, b in zip(nv_compute_gae(x, v, mask, 0.9, 0.8), nb.compute_gae(x, v, mask, 0.9, 0.8)):
            torch.testing.assert_close(a, b)


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    survivors = surviving_variants(NOTEBOOK, nb, WRONG_VARIANTS)
    assert not survivors, f"wrong implementations that still pass: {survivors}"


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every math cell, and each validation cell
    notices the missing checks."""
    failed = failing(run_test_cells(NOTEBOOK, NO_VALIDATION, module=nb))
    errors_cells = {gid for gid in graded_cells(NOTEBOOK) if gid.endswith("_errors")}
    assert set(failed) == errors_cells, failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []
    cells = graded_cells(NOTEBOOK)
    for name in NO_VALIDATION:
        assert f"test_{name}_errors" in cells, f"{name} promises errors but has no validation cell"
