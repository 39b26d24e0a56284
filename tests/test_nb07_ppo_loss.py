"""Notebook 07 (the PPO loss): the reference code against independent oracles.

Oracles are plain Python loops over the masked tokens (``math`` only), closed forms
(the analytic gradients of each branch, the exact KL between two categoricals) and
torch.autograd.gradcheck. Random cases come from seeded generators: random shapes,
right/left padded and holey masks, one-token masks, float32 and float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cells import failing, graded_cells, run_silently, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "07_ppo_loss" / "07_ppo_loss.ipynb"
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
STAT_KEYS = {"loss", "policy_loss", "value_loss", "entropy", "ptx_loss", "approx_kl", "clip_frac"}


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


# ----------------------------------------------------------------------------- random cases


def random_mask(gen: torch.Generator, B: int, T: int, kind: str) -> torch.Tensor:
    """'right'/'left' padded rows (some empty), 'holes', or 'one' (a single token); never all-zero."""
    if kind == "one":
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[int(torch.randint(B, (1,), generator=gen)), int(torch.randint(T, (1,), generator=gen))] = True
        return mask
    if kind == "holes":
        mask = torch.rand(B, T, generator=gen) < 0.5
    else:
        lengths = torch.randint(0, T + 1, (B,), generator=gen)
        pos = torch.arange(T).expand(B, T)
        mask = pos < lengths[:, None] if kind == "right" else pos >= (T - lengths)[:, None]
    if not mask.any():
        mask[-1, -1] = True
    return mask


def cases(seed: int, n: int, max_b: int = 5, max_t: int = 9):
    gen = torch.Generator().manual_seed(seed)
    kinds = ("right", "left", "holes", "one")
    for i in range(n):
        B = int(torch.randint(1, max_b + 1, (1,), generator=gen))
        T = int(torch.randint(1, max_t + 1, (1,), generator=gen))
        yield gen, B, T, random_mask(gen, B, T, kinds[i % len(kinds)])


def away_from(x: torch.Tensor, kinks: list[float], margin: float) -> torch.Tensor:
    """Move entries within `margin` of a kink to 2*margin past it (finite differences stay smooth)."""
    for k in kinks:
        near = (x - k).abs() < margin
        x = torch.where(near, torch.full_like(x, k + 2 * margin), x)
    return x


def policy_inputs(gen, B, T, eps, dtype=torch.float64):
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 4
    rho = away_from(torch.rand(B, T, generator=gen, dtype=torch.float64) * 1.8 + 0.2, [1 - eps, 1 + eps], 0.02)
    adv = away_from(torch.randn(B, T, generator=gen, dtype=torch.float64), [0.0], 0.05)
    return (old + rho.log()).to(dtype), old.to(dtype), adv.to(dtype)


def value_inputs(gen, B, T, c, dtype=torch.float64):
    vold = torch.randn(B, T, generator=gen, dtype=torch.float64)
    delta = away_from(torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.5, [-c, c], 0.02)
    v = vold + delta
    ret = vold + torch.randn(B, T, generator=gen, dtype=torch.float64)
    mid = (v + vold + delta.clamp(-c, c)) / 2  # where the two squares swap
    ret = torch.where((ret - mid).abs() < 0.05, mid + 0.2, ret)
    return v.to(dtype), vold.to(dtype), ret.to(dtype)


def tokens(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if bool(mask[b, t])]


def close(got, expected, dtype, what):
    assert isinstance(got, torch.Tensor), f"{what}: expected a tensor, got {type(got).__name__}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    exp = torch.as_tensor(expected, dtype=torch.float64)
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(exp.shape)}"
    torch.testing.assert_close(got.detach().double(), exp, **TOL[dtype], msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------- python oracles


def oracle_surrogate(lp, old, adv, mask, eps):
    terms = []
    for b, t in tokens(mask):
        r, a = math.exp(float(lp[b, t]) - float(old[b, t])), float(adv[b, t])
        terms.append(max(-a * r, -a * min(max(r, 1 - eps), 1 + eps)))
    return sum(terms) / len(terms)


def oracle_surrogate_grad(lp, old, adv, mask, eps):
    n = int(mask.sum())
    g = torch.zeros(lp.shape, dtype=torch.float64)
    for b, t in tokens(mask):
        r, a = math.exp(float(lp[b, t]) - float(old[b, t])), float(adv[b, t])
        clipped = (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps)
        g[b, t] = 0.0 if clipped else -a * r / n
    return g


def oracle_value(v, vold, ret, mask, c):
    terms = []
    for b, t in tokens(mask):
        V, Vo, R = float(v[b, t]), float(vold[b, t]), float(ret[b, t])
        Vc = V if c is None else Vo + min(max(V - Vo, -c), c)
        terms.append(0.5 * max((V - R) ** 2, (Vc - R) ** 2))
    return sum(terms) / len(terms)


def oracle_value_grad(v, vold, ret, mask, c):
    n = int(mask.sum())
    g = torch.zeros(v.shape, dtype=torch.float64)
    for b, t in tokens(mask):
        V, Vo, R = float(v[b, t]), float(vold[b, t]), float(ret[b, t])
        Vc = Vo + min(max(V - Vo, -c), c)
        g[b, t] = (V - R) / n if (V - R) ** 2 >= (Vc - R) ** 2 else 0.0
    return g


def softmax_row(row):
    m = max(row)
    ex = [math.exp(x - m) for x in row]
    s = sum(ex)
    return [e / s for e in ex]


def oracle_entropy_row(row):
    return -sum(p * math.log(p) for p in softmax_row(row) if p > 0)


def oracle_ptx(z, ids, mask):
    terms = []
    for b in range(z.shape[0]):
        for t in range(z.shape[1] - 1):
            if mask is None or bool(mask[b, t + 1]):
                row = [float(x) for x in z[b, t]]
                m = max(row)
                terms.append(m + math.log(sum(math.exp(x - m) for x in row)) - row[int(ids[b, t + 1])])
    return sum(terms) / len(terms)


# ------------------------------------------------------------------------------------ tests


def test_masked_mean_comes_from_notebook_06(nb):
    import minirlhf.gae

    assert nb.masked_mean is minirlhf.gae.masked_mean, "notebook 07 must import masked_mean from minirlhf.gae"


@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_ratio(nb, dtype):
    gen = torch.Generator().manual_seed(1)
    lp = (-torch.rand(3, 4, generator=gen, dtype=torch.float64) * 3).to(dtype)
    old = (-torch.rand(3, 4, generator=gen, dtype=torch.float64) * 3).to(dtype)
    want = [[math.exp(float(lp[b, t]) - float(old[b, t])) for t in range(4)] for b in range(3)]
    close(nb.probability_ratio(lp, old), want, dtype, "probability_ratio")
    leaf, old_leaf = lp.clone().requires_grad_(True), old.clone().requires_grad_(True)
    nb.probability_ratio(leaf, old_leaf).sum().backward()
    close(leaf.grad, want, dtype, "d rho / d logprobs = rho")
    assert old_leaf.grad is None, "no gradient may reach old_logprobs"
    with pytest.raises(ValueError):
        nb.probability_ratio(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(TypeError):
        nb.probability_ratio(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_surrogate_values_random(nb, dtype):
    for i, (gen, B, T, mask) in enumerate(cases(10, 24)):
        eps = (0.1, 0.2, 0.3)[i % 3]
        lp, old, adv = policy_inputs(gen, B, T, eps, dtype)
        want = oracle_surrogate(lp, old, adv, mask, eps)
        for m in (mask, mask.to(dtype), mask.long()):
            got = nb.clipped_surrogate_loss(lp, old, adv, m, clip_eps=eps)
            close(got, want, dtype, f"clipped_surrogate_loss case {i} B={B} T={T} eps={eps} mask {m.dtype}")


def test_surrogate_gradient_facts(nb):
    for i, (gen, B, T, mask) in enumerate(cases(11, 12)):
        lp, old, adv = policy_inputs(gen, B, T, 0.2)
        leaf = lp.clone().requires_grad_(True)
        old_leaf, adv_leaf = old.clone().requires_grad_(True), adv.clone().requires_grad_(True)
        nb.clipped_surrogate_loss(leaf, old_leaf, adv_leaf, mask, 0.2).backward()
        expected = oracle_surrogate_grad(lp, old, adv, mask, 0.2)
        torch.testing.assert_close(leaf.grad, expected, atol=1e-12, rtol=1e-10)
        rho = (lp - old).exp()
        clipped = mask & (((adv > 0) & (rho > 1.2)) | ((adv < 0) & (rho < 0.8)))
        assert bool((leaf.grad[clipped] == 0).all()), "gradient must be exactly 0 on clipped tokens"
        assert bool((leaf.grad[~mask] == 0).all()), "masked-out tokens get no gradient"
        for name, g in (("old_logprobs", old_leaf.grad), ("advantages", adv_leaf.grad)):
            assert g is None or bool((g == 0).all()), f"gradient reached {name}"
    # the clipped branch must actually occur in these cases, on both sides
    gen = torch.Generator().manual_seed(0)
    lp, old, adv = policy_inputs(gen, 6, 8, 0.2)
    rho = (lp - old).exp()
    assert bool(((adv > 0) & (rho > 1.2)).any()) and bool(((adv < 0) & (rho < 0.8)).any())


def test_surrogate_gradcheck_and_edge_cases(nb):
    gen = torch.Generator().manual_seed(12)
    lp, old, adv = policy_inputs(gen, 2, 5, 0.2)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    leaf = lp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: nb.clipped_surrogate_loss(x, old, adv, mask, 0.2), (leaf,))
    # clip_eps = 0: max(-A rho, -A)
    one = torch.zeros(2, 5, dtype=torch.bool)
    one[1, 2] = True
    r, a = math.exp(float(lp[1, 2] - old[1, 2])), float(adv[1, 2])
    close(nb.clipped_surrogate_loss(lp, old, adv, one, 0.0), max(-a * r, -a), torch.float64, "clip_eps=0")
    # inputs untouched
    copies = [x.clone() for x in (lp, old, adv, mask)]
    nb.clipped_surrogate_loss(lp, old, adv, mask, 0.2)
    for x, c in zip((lp, old, adv, mask), copies):
        assert torch.equal(x, c), "clipped_surrogate_loss modified an input"
    with pytest.raises(ValueError, match="mask"):
        nb.clipped_surrogate_loss(lp, old, adv, torch.zeros(2, 5), 0.2)
    with pytest.raises(ValueError):
        nb.clipped_surrogate_loss(lp, old, adv[:, :4], mask, 0.2)
    with pytest.raises(ValueError):
        nb.clipped_surrogate_loss(lp, old, adv, mask, -0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_value_loss_values_random(nb, dtype):
    for i, (gen, B, T, mask) in enumerate(cases(20, 24)):
        c = (0.2, 0.5, None)[i % 3]
        v, vold, ret = value_inputs(gen, B, T, c or 0.2, dtype)
        got = nb.clipped_value_loss(v, vold, ret, mask, clip_range=c)
        close(got, oracle_value(v, vold, ret, mask, c), dtype, f"clipped_value_loss case {i} c={c}")


def test_value_loss_gradients(nb):
    seen_zero = seen_live = False
    for i, (gen, B, T, mask) in enumerate(cases(21, 12)):
        v, vold, ret = value_inputs(gen, B, T, 0.2)
        leaf = v.clone().requires_grad_(True)
        vold_leaf, ret_leaf = vold.clone().requires_grad_(True), ret.clone().requires_grad_(True)
        nb.clipped_value_loss(leaf, vold_leaf, ret_leaf, mask, 0.2).backward()
        expected = oracle_value_grad(v, vold, ret, mask, 0.2)
        torch.testing.assert_close(leaf.grad, expected, atol=1e-12, rtol=1e-10)
        seen_zero |= bool(((expected == 0) & mask).any())
        seen_live |= bool(((expected != 0) & mask).any())
        for name, g in (("old_values", vold_leaf.grad), ("returns", ret_leaf.grad)):
            assert g is None or bool((g == 0).all()), f"gradient reached {name}"
    assert seen_zero and seen_live, "test setup: both branches must occur"
    gen = torch.Generator().manual_seed(22)
    v, vold, ret = value_inputs(gen, 2, 4, 0.2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])
    leaf = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: nb.clipped_value_loss(x, vold, ret, mask, 0.2), (leaf,))
    with pytest.raises(ValueError, match="mask"):
        nb.clipped_value_loss(v, vold, ret, torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_values(nb, dtype):
    gen = torch.Generator().manual_seed(30)
    for shape, scale in (((2, 3, 5), 1.0), ((1, 1, 2), 5.0), ((3, 4, 17), 8.0), ((2, 2, 2, 6), 2.0)):
        z = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        flat = z.reshape(-1, shape[-1])
        want = torch.tensor([oracle_entropy_row([float(x) for x in row]) for row in flat], dtype=torch.float64)
        want = want.reshape(shape[:-1])
        close(nb.entropy_from_logits(z.to(dtype)), want, dtype, f"entropy {shape}")
        # shift invariance, also for a shift of 1e3
        close(nb.entropy_from_logits((z + 1e3).to(dtype)), want, dtype, f"entropy {shape} shifted by 1e3")


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_huge_logits(nb, dtype):
    z = torch.tensor([[[1e4, 1e4, 0.0, -1e4], [1e4, -1e4, 5e3, 0.0], [-1e4, -1e4, -1e4, -1e4]]], dtype=dtype)
    leaf = z.clone().requires_grad_(True)
    h = nb.entropy_from_logits(leaf)
    close(h, [[math.log(2), 0.0, math.log(4)]], dtype, "entropy of logits ~1e4")
    h.sum().backward()
    assert bool(torch.isfinite(leaf.grad).all())
    gen = torch.Generator().manual_seed(31)
    big = torch.randn(3, 4, 100, generator=gen).to(dtype) * 1e4
    h = nb.entropy_from_logits(big)
    assert bool(torch.isfinite(h).all()) and bool((h > -1e-4).all()) and bool((h < math.log(100) + 1e-4).all())


def test_entropy_gradient(nb):
    gen = torch.Generator().manual_seed(32)
    z = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    leaf = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(nb.entropy_from_logits, (leaf,))
    nb.entropy_from_logits(leaf).sum().backward()
    p = torch.softmax(z, -1)
    torch.testing.assert_close(leaf.grad, -p * (z - (p * z).sum(-1, keepdim=True)), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_approx_kl_and_clip_fraction(nb, dtype):
    for i, (gen, B, T, mask) in enumerate(cases(40, 16)):
        eps = (0.1, 0.2)[i % 2]
        lp, old, _ = policy_inputs(gen, B, T, eps, dtype)
        ls = [float(lp[b, t]) - float(old[b, t]) for b, t in tokens(mask)]
        leaf = lp.clone().requires_grad_(True)
        kl = nb.approx_kl(leaf, old, mask)
        close(kl, sum(math.expm1(x) - x for x in ls) / len(ls), dtype, f"approx_kl case {i}")
        frac = nb.clip_fraction(leaf, old, mask, eps)
        close(frac, sum(abs(math.exp(x) - 1) > eps for x in ls) / len(ls), dtype, f"clip_fraction case {i}")
        for name, x in (("approx_kl", kl), ("clip_fraction", frac)):
            assert x.dim() == 0 and x.grad_fn is None and not x.requires_grad, f"{name} must be a detached 0-dim tensor"
    with pytest.raises(ValueError):
        nb.approx_kl(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        nb.clip_fraction(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), 0.2)


def test_approx_kl_estimates_kl_old_to_new(nb):
    """Tokens sampled from the OLD policy: the k3 mean converges to KL(old || new), not KL(new || old)."""
    gen = torch.Generator().manual_seed(41)
    log_old = torch.tensor([3.0, 3, 0, 0, 0, 0, 0, 0], dtype=torch.float64).log_softmax(-1)
    log_new = torch.tensor([0.0, 0, 0, 0, 0, 0, 1, 2], dtype=torch.float64).log_softmax(-1)
    p_old, p_new = log_old.exp().tolist(), log_new.exp().tolist()
    kl_old_new = sum(p * math.log(p / q) for p, q in zip(p_old, p_new))
    kl_new_old = sum(q * math.log(q / p) for p, q in zip(p_old, p_new))
    x = torch.multinomial(log_old.exp(), 200_000, replacement=True, generator=gen).view(1, -1)
    est = float(nb.approx_kl(log_new[x], log_old[x], torch.ones_like(x)))
    # per-sample std of k3 here is 2.4: the standard error of the mean is 0.005
    assert abs(est - kl_old_new) < 0.05, (est, kl_old_new)
    assert abs(kl_old_new - kl_new_old) > 0.2  # the direction is really tested
    # float32: tiny log-ratios keep their digits (expm1)
    tiny = nb.approx_kl(torch.full((1, 3), 1e-4), torch.zeros(1, 3), torch.ones(1, 3))
    assert abs(float(tiny) - (math.expm1(1e-4) - 1e-4)) < 1e-2 * (math.expm1(1e-4) - 1e-4)


def test_adaptive_controller_trajectory(nb):
    gen = torch.Generator().manual_seed(50)
    for trial in range(5):
        init = 0.01 + float(torch.rand((), generator=gen)) * 0.5
        target = 0.5 + float(torch.rand((), generator=gen)) * 10
        horizon = (1000, 10_000, 25_000)[trial % 3]
        ctl = nb.AdaptiveKLController(init, target, horizon)
        beta = init
        for step in range(100):
            kl = float(torch.rand((), generator=gen)) * 3 * target
            n_steps = (1, 64, 512, 0)[step % 4]
            e = min(max(kl / target - 1, -0.2), 0.2)
            beta = beta * (1 + e * n_steps / horizon)
            ctl.update(torch.tensor(kl, dtype=torch.float64) if step % 2 else kl, n_steps)
            assert type(ctl.value) is float
            assert math.isclose(ctl.value, beta, rel_tol=1e-12), (trial, step, ctl.value, beta)
    # proportional inside the band, clipped outside, both directions
    for kl, want in ((4.4, 1 + 0.1 * 0.5), (3.6, 1 - 0.1 * 0.5), (100.0, 1 + 0.2 * 0.5), (0.0, 1 - 0.2 * 0.5)):
        ctl = nb.AdaptiveKLController(1, 4.0, 100)
        assert type(ctl.value) is float, "value must be a Python float, also for an int init_kl_coef"
        ctl.update(kl, 50)
        assert math.isclose(ctl.value, want, rel_tol=1e-12), (kl, ctl.value, want)
    for bad in ((0.1, 0.0, 100), (0.1, 1.0, 0), (-0.1, 1.0, 100)):
        with pytest.raises(ValueError):
            nb.AdaptiveKLController(*bad)


def test_fixed_controller(nb):
    ctl = nb.FixedKLController(2)
    assert type(ctl.value) is float and ctl.value == 2.0
    for kl in (0.0, 1e9, torch.tensor(3.0)):
        assert ctl.update(kl, 512) is None
        assert ctl.value == 2.0
    with pytest.raises(ValueError):
        nb.FixedKLController(-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ptx_lm_loss(nb, dtype):
    gen = torch.Generator().manual_seed(60)
    for i in range(8):
        B, T, V = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(2, 8, (1,), generator=gen)), 7
        z = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2
        ids = torch.randint(V, (B, T), generator=gen)
        mask = torch.rand(B, T, generator=gen) < 0.7
        mask[0, 1] = True
        close(nb.ptx_lm_loss(z.to(dtype), ids, mask), oracle_ptx(z, ids, mask), dtype, f"ptx case {i}")
        close(nb.ptx_lm_loss(z.to(dtype), ids), oracle_ptx(z, ids, None), dtype, f"ptx case {i}, mask=None")
    z = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
    ids = torch.randint(5, (2, 4), generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    leaf = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: nb.ptx_lm_loss(x, ids, mask), (leaf,))
    nb.ptx_lm_loss(leaf, ids, mask).backward()
    # closed form: (softmax - onehot(next token)) / N' on target positions, 0 elsewhere
    expected = torch.zeros_like(z)
    targets = [(b, t) for b in range(2) for t in range(3) if mask[b, t + 1]]
    for b, t in targets:
        expected[b, t] = torch.softmax(z[b, t], -1)
        expected[b, t, int(ids[b, t + 1])] -= 1
    torch.testing.assert_close(leaf.grad, expected / len(targets), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError):
        nb.ptx_lm_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError):
        nb.ptx_lm_loss(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(TypeError):
        nb.ptx_lm_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3))


def ppo_case(seed, B=3, T=6, V=5, dtype=torch.float64, eps=0.2, c=0.2):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(gen, B, T, "holes")
    lp, old, adv = policy_inputs(gen, B, T, eps)
    v, vold, ret = value_inputs(gen, B, T, c)
    d = dict(logprobs=lp, old_logprobs=old, advantages=adv, values=v, old_values=vold, returns=ret, mask=mask,
             logits=torch.randn(B, T, V, generator=gen, dtype=torch.float64),
             ptx_logits=torch.randn(2, 5, V, generator=gen, dtype=torch.float64),
             ptx_labels=torch.randint(V, (2, 5), generator=gen),
             ptx_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    return {k: (x.to(dtype) if x.is_floating_point() else x) for k, x in d.items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_ppo_loss_combination(nb, dtype):
    coefs = dict(clip_eps=0.15, clip_range_value=0.3, vf_coef=0.4, ent_coef=0.02, ptx_coef=0.6)
    d = ppo_case(70, dtype=dtype, eps=0.15, c=0.3)
    # two ratios clipped at eps=0.15 but not at the default 0.2: the stats must use clip_eps
    (b0, t0), (b1, t1) = tokens(d["mask"])[:2]
    d["logprobs"] = d["logprobs"].clone()
    d["logprobs"][b0, t0] = d["old_logprobs"][b0, t0] + math.log(0.82)
    d["logprobs"][b1, t1] = d["old_logprobs"][b1, t1] + math.log(1.18)
    d64 = {k: (x.double() if x.is_floating_point() else x) for k, x in d.items()}
    m = d64["mask"]
    pol = oracle_surrogate(d64["logprobs"], d64["old_logprobs"], d64["advantages"], m, 0.15)
    val = oracle_value(d64["values"], d64["old_values"], d64["returns"], m, 0.3)
    ent = sum(oracle_entropy_row([float(x) for x in d64["logits"][b, t]]) for b, t in tokens(m)) / int(m.sum())
    ptx = oracle_ptx(d64["ptx_logits"], d64["ptx_labels"], d64["ptx_mask"])
    ls = [float(d64["logprobs"][b, t] - d64["old_logprobs"][b, t]) for b, t in tokens(m)]
    loss, stats = nb.ppo_loss(**d, **coefs)
    want = pol + 0.4 * val - 0.02 * ent + 0.6 * ptx
    close(loss, want, dtype, "ppo_loss")
    assert set(stats) >= STAT_KEYS, f"missing stats: {STAT_KEYS - set(stats)}"
    expected_stats = dict(loss=want, policy_loss=pol, value_loss=val, entropy=ent, ptx_loss=ptx,
                          approx_kl=sum(math.expm1(x) - x for x in ls) / len(ls),
                          clip_frac=sum(abs(math.exp(x) - 1) > 0.15 for x in ls) / len(ls))
    for k, v in expected_stats.items():
        close(stats[k], v, dtype, f'stats["{k}"]')


def test_ppo_loss_gradients(nb):
    coefs = dict(clip_eps=0.2, clip_range_value=0.2, vf_coef=0.4, ent_coef=0.02, ptx_coef=0.6)
    d = ppo_case(71, B=2, T=4, V=3)
    names = ("logprobs", "values", "logits", "ptx_logits")
    blocked = ("old_logprobs", "advantages", "old_values", "returns")
    leaves = {k: d[k].clone().requires_grad_(True) for k in names + blocked}
    loss, stats = nb.ppo_loss(**{**d, **leaves}, **coefs)
    for k, s in stats.items():
        assert s.grad_fn is None and not s.requires_grad, f'stats["{k}"] must be detached'
    loss.backward()
    m = d["mask"]
    n = int(m.sum())
    torch.testing.assert_close(leaves["logprobs"].grad,
                               oracle_surrogate_grad(d["logprobs"], d["old_logprobs"], d["advantages"], m, 0.2))
    torch.testing.assert_close(leaves["values"].grad,
                               0.4 * oracle_value_grad(d["values"], d["old_values"], d["returns"], m, 0.2))
    z = d["logits"]
    p = torch.softmax(z, -1)
    dH = -p * (z - (p * z).sum(-1, keepdim=True))
    torch.testing.assert_close(leaves["logits"].grad, -0.02 * dH * m[..., None] / n)
    pz, ids, pm = d["ptx_logits"], d["ptx_labels"], d["ptx_mask"]
    dptx = torch.zeros_like(pz)
    targets = [(b, t) for b in range(pz.shape[0]) for t in range(pz.shape[1] - 1) if pm[b, t + 1]]
    for b, t in targets:
        dptx[b, t] = torch.softmax(pz[b, t], -1)
        dptx[b, t, int(ids[b, t + 1])] -= 1
    torch.testing.assert_close(leaves["ptx_logits"].grad, 0.6 * dptx / len(targets))
    for k in blocked:
        g = leaves[k].grad
        assert g is None or bool((g == 0).all()), f"gradient reached {k}"

    def fn(lp, v):
        return nb.ppo_loss(**{**d, "logprobs": lp, "values": v}, **coefs)[0]

    assert torch.autograd.gradcheck(fn, tuple(d[k].clone().requires_grad_(True) for k in ("logprobs", "values")))


def test_ppo_loss_optional_parts(nb):
    d = ppo_case(72)
    core = {k: d[k] for k in ("logprobs", "old_logprobs", "advantages", "values", "old_values", "returns", "mask")}
    loss, stats = nb.ppo_loss(**core)
    assert torch.isfinite(loss) and torch.isnan(stats["entropy"]) and torch.isnan(stats["ptx_loss"])
    # given but with zero coefficients: logged, yet no gradient and no change of the loss
    lg = d["logits"].clone().requires_grad_(True)
    pz = d["ptx_logits"].clone().requires_grad_(True)
    lp = d["logprobs"].clone().requires_grad_(True)
    loss2, stats2 = nb.ppo_loss(**{**core, "logprobs": lp}, logits=lg, ptx_logits=pz, ptx_labels=d["ptx_labels"],
                                ptx_mask=d["ptx_mask"])
    torch.testing.assert_close(loss2.detach(), loss)
    assert torch.isfinite(stats2["entropy"]) and torch.isfinite(stats2["ptx_loss"])
    loss2.backward()
    for name, leaf in (("logits", lg), ("ptx_logits", pz)):
        assert leaf.grad is None or bool((leaf.grad == 0).all()), f"{name} got gradient with a zero coefficient"
    with pytest.raises(ValueError):
        nb.ppo_loss(**core, ent_coef=0.01)
    with pytest.raises(ValueError):
        nb.ppo_loss(**core, ptx_coef=0.5)
    with pytest.raises(ValueError):
        nb.ppo_loss(**core, logits=torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        nb.ppo_loss(**{**core, "mask": torch.zeros_like(core["mask"])})
    # float32 in, float32 out
    loss32, stats32 = nb.ppo_loss(**{k: (x.float() if x.is_floating_point() else x) for k, x in core.items()})
    assert loss32.dtype == torch.float32 and all(s.dtype == torch.float32 for s in stats32.values())


# ----------------------------------------------------------------------------- the test cells' bar
#
# The test cells themselves are checked from both sides: the reference passes all of them, silently; each
# plausible wrong implementation fails the cell that grades its math; and a correct implementation without
# any input checks (torch's own errors on bad shapes) keeps every point except those of the `_errors` cells.


def _mmean(x, mask):
    """Masked mean over everything, no checks (nan for an empty mask)."""
    m = mask.bool()
    return torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum() / m.sum()


# ------------------------------------------------------------------ correct math, no input checks at all


def nv_probability_ratio(logprobs, old_logprobs):
    return torch.exp(logprobs - old_logprobs.detach())


def nv_clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
    ratio, adv = torch.exp(logprobs - old_logprobs.detach()), advantages.detach()
    return _mmean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)), mask)


def nv_clipped_value_loss(values, old_values, returns, mask, clip_range=0.2):
    old, ret = old_values.detach(), returns.detach()
    sq = (values - ret) ** 2
    if clip_range is not None:
        sq = torch.max(sq, (old + (values - old).clamp(-clip_range, clip_range) - ret) ** 2)
    return 0.5 * _mmean(sq, mask)


def nv_entropy_from_logits(logits):  # another stable form: log_softmax is finite wherever logits are
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def nv_approx_kl(logprobs, old_logprobs, mask):
    with torch.no_grad():
        l = logprobs - old_logprobs
        return _mmean(torch.expm1(l) - l, mask)


def nv_clip_fraction(logprobs, old_logprobs, mask, clip_eps=0.2):
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        return _mmean(((ratio - 1).abs() > clip_eps).to(logprobs.dtype), mask)


def nv_mean_response_kl(logprobs, ref_logprobs, mask):
    with torch.no_grad():
        return torch.where(mask.bool(), logprobs - ref_logprobs, torch.zeros((), dtype=logprobs.dtype)).sum(1).mean()


class NVAdaptiveKLController:
    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = float(init_kl_coef), target, horizon

    def update(self, current_kl, n_steps):
        error = max(-0.2, min(0.2, float(current_kl) / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon


class NVFixedKLController:
    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current_kl, n_steps):
        return None


def nv_ptx_lm_loss(logits, input_ids, mask=None):
    target = input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
    return nll.mean() if mask is None else _mmean(nll, mask[:, 1:])


def _ppo_loss_with(*, ent_sign=-1.0, use_vf_coef=True, stats_eps=None, use_ptx=True, ent_mask=True, detach_stats=True):
    def ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns, mask, logits=None, *,
                 clip_eps=0.2, clip_range_value=0.2, vf_coef=0.1, ent_coef=0.0, ptx_logits=None, ptx_labels=None,
                 ptx_mask=None, ptx_coef=0.0):
        pol = nv_clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, clip_eps)
        val = nv_clipped_value_loss(values, old_values, returns, mask, clip_range_value)
        loss = pol + (vf_coef if use_vf_coef else 1.0) * val
        ent = ptx = torch.tensor(float("nan"), dtype=pol.dtype)
        if logits is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and ent_coef != 0):
                h = nv_entropy_from_logits(logits)
                ent = _mmean(h, mask) if ent_mask else h.mean()
            if ent_coef != 0:
                loss = loss + ent_sign * ent_coef * ent
        if ptx_logits is not None and ptx_labels is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and ptx_coef != 0):
                ptx = nv_ptx_lm_loss(ptx_logits, ptx_labels, ptx_mask)
            if ptx_coef != 0 and use_ptx:
                loss = loss + ptx_coef * ptx
        d = (lambda t: t.detach()) if detach_stats else (lambda t: t)
        stats = {"loss": d(loss), "policy_loss": d(pol), "value_loss": d(val), "entropy": d(ent), "ptx_loss": d(ptx),
                 "approx_kl": nv_approx_kl(logprobs, old_logprobs, mask),
                 "clip_frac": nv_clip_fraction(logprobs, old_logprobs, mask,
                                               clip_eps if stats_eps is None else stats_eps)}
        return loss, stats
    return ppo_loss


NO_VALIDATION = {
    "probability_ratio": nv_probability_ratio, "clipped_surrogate_loss": nv_clipped_surrogate_loss,
    "clipped_value_loss": nv_clipped_value_loss, "entropy_from_logits": nv_entropy_from_logits,
    "approx_kl": nv_approx_kl, "clip_fraction": nv_clip_fraction, "mean_response_kl": nv_mean_response_kl,
    "AdaptiveKLController": NVAdaptiveKLController, "FixedKLController": NVFixedKLController,
    "ptx_lm_loss": nv_ptx_lm_loss, "ppo_loss": _ppo_loss_with(),
}
PROMISES_NO_ERRORS = {"mean_response_kl"}  # its docstring asks for no input checks


# ------------------------------------------------------------------ plausible wrong math


def ratio_not_detached(logprobs, old_logprobs):
    return torch.exp(logprobs - old_logprobs)


def ratio_inverted(logprobs, old_logprobs):
    return torch.exp(old_logprobs.detach() - logprobs)


def ratio_of_logprobs(logprobs, old_logprobs):
    return logprobs / old_logprobs.detach()


def entropy_log_of_softmax(logits):
    p = logits.softmax(-1)
    return -(p * p.log()).sum(-1)


def entropy_negated(logits):
    return -nv_entropy_from_logits(logits)


def entropy_in_bits(logits):
    return nv_entropy_from_logits(logits) / math.log(2)


def entropy_wrong_axis(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def _surrogate_with(per_token=None, reduce=_mmean, ratio=None, detach_adv=True):
    """clipped_surrogate_loss with one piece swapped: per_token(adv, rho, eps), reduce(x, mask), ratio(l, eps)."""
    def clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
        l = logprobs - old_logprobs.detach()
        rho = torch.exp(l)
        adv = advantages.detach() if detach_adv else advantages
        if ratio is not None:
            term = torch.max(-adv * rho, -adv * ratio(l, clip_eps))
        elif per_token is not None:
            term = per_token(adv, rho, clip_eps)
        else:
            term = torch.max(-adv * rho, -adv * rho.clamp(1 - clip_eps, 1 + clip_eps))
        return reduce(term, mask)
    return clipped_surrogate_loss


def _mean_of_row_means(x, mask):
    m = mask.bool()
    rows = m.any(1)
    per_row = torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum(1) / m.sum(1).clamp_min(1)
    return per_row[rows].mean()


def _value_with(*, combine=torch.max, half=0.5, centre="old", none_as_zero=False, reduce=_mmean, detach_old=True):
    def clipped_value_loss(values, old_values, returns, mask, clip_range=0.2):
        old = old_values.detach() if detach_old else old_values
        ret = returns.detach()
        c = 0.0 if (clip_range is None and none_as_zero) else clip_range
        sq = (values - ret) ** 2
        if c is not None:
            anchor = old if centre == "old" else ret
            sq = combine(sq, (anchor + (values - anchor).clamp(-c, c) - ret) ** 2)
        return half * reduce(sq, mask)
    return clipped_value_loss


def _approx_kl_with(per_token, detach=True, reduce=_mmean):
    def approx_kl(logprobs, old_logprobs, mask):
        with torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
            return reduce(per_token(logprobs - old_logprobs), mask)
    return approx_kl


def _clip_fraction_with(outside, reduce=_mmean):
    def clip_fraction(logprobs, old_logprobs, mask, clip_eps=0.2):
        with torch.no_grad():
            l = logprobs - old_logprobs
            return reduce(outside(l, clip_eps).to(logprobs.dtype), mask)
    return clip_fraction


def _response_kl_with(per_token=lambda l: l, reduce=None):
    def mean_response_kl(logprobs, ref_logprobs, mask):
        with torch.no_grad():
            m = mask.bool()
            x = per_token(logprobs - ref_logprobs)
            if reduce is not None:
                return reduce(x, mask)
            return torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum(1).mean()
    return mean_response_kl


def _masked_times_mask_kl(logprobs, ref_logprobs, mask):
    return ((logprobs - ref_logprobs) * mask.to(logprobs.dtype)).sum(1).mean().detach()


def _nonempty_rows_kl(logprobs, ref_logprobs, mask):
    m = mask.bool()
    per = torch.where(m, logprobs - ref_logprobs, torch.zeros((), dtype=logprobs.dtype)).sum(1)
    return per[m.any(1)].mean().detach()


def _adaptive_with(step):
    """AdaptiveKLController whose update is value = step(value, kl, target, n, horizon)."""
    class AdaptiveKLController(NVAdaptiveKLController):
        def update(self, current_kl, n_steps):
            self.value = float(step(self.value, float(current_kl), self.target, n_steps, self.horizon))
    return AdaptiveKLController


def _clip(e):
    return max(-0.2, min(0.2, e))


class MovingFixedKLController(NVFixedKLController):
    def update(self, current_kl, n_steps):
        self.value *= 1 + 0.1 * (float(current_kl) > 1)


def _ptx_with(*, shift=True, mask_at="target", reduce="mean"):
    def ptx_lm_loss(logits, input_ids, mask=None):
        z, target = (logits[:, :-1], input_ids[:, 1:]) if shift else (logits, input_ids)
        nll = F.cross_entropy(z.flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        if mask is None or mask_at == "ignored":
            m = torch.ones_like(target)
        elif not shift:
            m = mask
        else:
            m = mask[:, 1:] if mask_at == "target" else mask[:, :-1]
        m = m.bool()
        total = torch.where(m, nll, torch.zeros((), dtype=nll.dtype)).sum()
        return total / m.sum() if reduce == "mean" else total / target.shape[0]
    return ptx_lm_loss


WRONG_VARIANTS = [
    ("old_logprobs not detached", {"probability_ratio": ratio_not_detached}, "test_probability_ratio"),
    ("ratio inverted (old / new)", {"probability_ratio": ratio_inverted}, "test_probability_ratio"),
    ("ratio of the log-probs", {"probability_ratio": ratio_of_logprobs}, "test_probability_ratio"),
    ("min of the two losses (the optimistic bound)",
     {"clipped_surrogate_loss": _surrogate_with(per_token=lambda a, r, e: torch.min(-a * r, -a * r.clamp(1 - e, 1 + e)))},
     "test_clipped_surrogate_loss"),
    ("only the clipped term",
     {"clipped_surrogate_loss": _surrogate_with(per_token=lambda a, r, e: -a * r.clamp(1 - e, 1 + e))},
     "test_clipped_surrogate_loss"),
    ("the objective, not the loss (sign)",
     {"clipped_surrogate_loss": _surrogate_with(per_token=lambda a, r, e: torch.min(a * r, a * r.clamp(1 - e, 1 + e)))},
     "test_clipped_surrogate_loss"),
    ("clip applied to the log-ratio, |l| <= eps",
     {"clipped_surrogate_loss": _surrogate_with(ratio=lambda l, e: torch.exp(l.clamp(-e, e)))},
     "test_clipped_surrogate_loss"),
    ("mean over all positions, mask ignored", {"clipped_surrogate_loss": _surrogate_with(reduce=lambda x, m: x.mean())},
     "test_clipped_surrogate_loss"),
    ("mean of the per-response means (wrong axis)", {"clipped_surrogate_loss": _surrogate_with(reduce=_mean_of_row_means)},
     "test_clipped_surrogate_loss"),
    ("advantages not detached", {"clipped_surrogate_loss": _surrogate_with(detach_adv=False)}, "test_clipped_surrogate_loss"),
    ("min of the two squares", {"clipped_value_loss": _value_with(combine=torch.min)}, "test_clipped_value_loss"),
    ("no 1/2", {"clipped_value_loss": _value_with(half=1.0)}, "test_clipped_value_loss"),
    ("value clipped around the returns, not the old values", {"clipped_value_loss": _value_with(centre="returns")},
     "test_clipped_value_loss"),
    ("clip_range=None read as 0", {"clipped_value_loss": _value_with(none_as_zero=True)}, "test_clipped_value_loss"),
    ("value loss over all positions, mask ignored", {"clipped_value_loss": _value_with(reduce=lambda x, m: x.mean())},
     "test_clipped_value_loss"),
    ("old_values not detached", {"clipped_value_loss": _value_with(detach_old=False)}, "test_clipped_value_loss"),
    ("-sum p log p with log(softmax) (0 * log 0 = nan for huge logits)", {"entropy_from_logits": entropy_log_of_softmax},
     "test_entropy_from_logits"),
    ("entropy without the minus sign", {"entropy_from_logits": entropy_negated}, "test_entropy_from_logits"),
    ("entropy in bits", {"entropy_from_logits": entropy_in_bits}, "test_entropy_from_logits"),
    ("entropy summed over the wrong axis", {"entropy_from_logits": entropy_wrong_axis}, "test_entropy_from_logits"),
    ("k3 in the other direction, KL(new || old)", {"approx_kl": _approx_kl_with(lambda l: torch.expm1(-l) + l)},
     "test_approx_kl"),
    ("k1, the mean of old - new", {"approx_kl": _approx_kl_with(lambda l: -l)}, "test_approx_kl"),
    ("k3 as exp(l) - 1 - l (no expm1)", {"approx_kl": _approx_kl_with(lambda l: torch.exp(l) - 1 - l)}, "test_approx_kl"),
    ("approx_kl not detached", {"approx_kl": _approx_kl_with(lambda l: torch.expm1(l) - l, detach=False)},
     "test_approx_kl"),
    ("approx_kl over all positions, mask ignored",
     {"approx_kl": _approx_kl_with(lambda l: torch.expm1(l) - l, reduce=lambda x, m: x.mean())}, "test_approx_kl"),
    ("|log rho| > eps instead of |rho - 1| > eps", {"clip_fraction": _clip_fraction_with(lambda l, e: l.abs() > e)},
     "test_clip_fraction"),
    (">= eps instead of > eps", {"clip_fraction": _clip_fraction_with(lambda l, e: (torch.exp(l) - 1).abs() >= e)},
     "test_clip_fraction"),
    ("only ratios above 1 + eps", {"clip_fraction": _clip_fraction_with(lambda l, e: torch.exp(l) - 1 > e)},
     "test_clip_fraction"),
    ("clip fraction over all positions, mask ignored",
     {"clip_fraction": _clip_fraction_with(lambda l, e: (torch.exp(l) - 1).abs() > e, reduce=lambda x, m: x.mean())},
     "test_clip_fraction"),
    ("per-token mean KL (the other unit)", {"mean_response_kl": _response_kl_with(reduce=_mmean)}, "test_mean_response_kl"),
    ("mean over each response's tokens, then over the batch",
     {"mean_response_kl": _response_kl_with(reduce=_mean_of_row_means)}, "test_mean_response_kl"),
    ("k3 instead of k1", {"mean_response_kl": _response_kl_with(per_token=lambda l: torch.expm1(-l) + l)},
     "test_mean_response_kl"),
    ("KL times the mask (-inf padding gives nan)", {"mean_response_kl": _masked_times_mask_kl}, "test_mean_response_kl"),
    ("empty responses left out of the batch mean", {"mean_response_kl": _nonempty_rows_kl}, "test_mean_response_kl"),
    ("error not clipped", {"AdaptiveKLController": _adaptive_with(lambda b, kl, t, n, h: b * (1 + (kl / t - 1) * n / h))},
     "test_AdaptiveKLController"),
    ("error inverted, target / KL - 1",
     {"AdaptiveKLController": _adaptive_with(lambda b, kl, t, n, h: b * (1 + _clip(t / max(kl, 1e-9) - 1) * n / h))},
     "test_AdaptiveKLController"),
    ("additive update", {"AdaptiveKLController": _adaptive_with(lambda b, kl, t, n, h: b + _clip(kl / t - 1) * n / h)},
     "test_AdaptiveKLController"),
    ("n_steps ignored", {"AdaptiveKLController": _adaptive_with(lambda b, kl, t, n, h: b * (1 + _clip(kl / t - 1) / h))},
     "test_AdaptiveKLController"),
    ("the step clipped instead of the error",
     {"AdaptiveKLController": _adaptive_with(lambda b, kl, t, n, h: b * (1 + _clip((kl / t - 1) * n / h)))},
     "test_AdaptiveKLController"),
    ("the fixed coefficient moves", {"FixedKLController": MovingFixedKLController}, "test_FixedKLController"),
    ("ptx without the shift", {"ptx_lm_loss": _ptx_with(shift=False)}, "test_ptx_lm_loss"),
    ("ptx mask read at the predicting position", {"ptx_lm_loss": _ptx_with(mask_at="source")}, "test_ptx_lm_loss"),
    ("ptx mask ignored", {"ptx_lm_loss": _ptx_with(mask_at="ignored")}, "test_ptx_lm_loss"),
    ("ptx summed over tokens, divided by B", {"ptx_lm_loss": _ptx_with(reduce="per_row")}, "test_ptx_lm_loss"),
    ("entropy bonus with the wrong sign", {"ppo_loss": _ppo_loss_with(ent_sign=1.0)}, "test_ppo_loss"),
    ("vf_coef ignored", {"ppo_loss": _ppo_loss_with(use_vf_coef=False)}, "test_ppo_loss"),
    ("clip_frac logged at the default eps", {"ppo_loss": _ppo_loss_with(stats_eps=0.2)}, "test_ppo_loss"),
    ("ptx term left out of the loss", {"ppo_loss": _ppo_loss_with(use_ptx=False)}, "test_ppo_loss"),
    ("entropy averaged over all positions", {"ppo_loss": _ppo_loss_with(ent_mask=False)}, "test_ppo_loss"),
    ("stats not detached", {"ppo_loss": _ppo_loss_with(detach_stats=False)}, "test_ppo_loss"),
]


def test_reference_passes_every_test_cell_silently(nb):
    results, stderr, warned = run_silently(NOTEBOOK, nb)
    assert failing(results) == {}
    assert stderr == "" and not warned, (stderr, warned)


def test_no_validation_versions_are_correct_math(nb):
    """The no-check versions used below agree with the reference on valid inputs (else the bar means nothing)."""
    d = ppo_case(80)
    coefs = dict(clip_eps=0.15, clip_range_value=0.3, vf_coef=0.4, ent_coef=0.02, ptx_coef=0.6)
    loss, stats = NO_VALIDATION["ppo_loss"](**d, **coefs)
    ref_loss, ref_stats = nb.ppo_loss(**d, **coefs)
    torch.testing.assert_close(loss, ref_loss)
    for k in STAT_KEYS:
        torch.testing.assert_close(stats[k], ref_stats[k])
    torch.testing.assert_close(nv_entropy_from_logits(d["logits"] * 1e4), nb.entropy_from_logits(d["logits"] * 1e4))
    torch.testing.assert_close(nv_mean_response_kl(d["logprobs"], d["old_logprobs"], d["mask"]),
                               nb.mean_response_kl(d["logprobs"], d["old_logprobs"], d["mask"]))


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
    for name in set(NO_VALIDATION) - PROMISES_NO_ERRORS:
        assert f"test_{name}_errors" in cells, f"{name} promises errors but has no validation cell"
    for name in PROMISES_NO_ERRORS:
        assert f"test_{name}_errors" not in cells


def test_controller_reads_the_kl_per_response(nb):
    """The unit of the controller's input: 30-token responses at 0.2 nats per token sit on the target of 6."""
    lp = torch.full((8, 40), -2.0)
    mask = torch.zeros(8, 40, dtype=torch.bool)
    mask[:, 5:35] = True
    kl = nb.mean_response_kl(lp, torch.where(mask, lp - 0.2, lp), mask)
    ctl = nb.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(kl, 8)
    assert ctl.value == pytest.approx(0.1, rel=1e-5)
    ctl.update(_mmean(lp - torch.where(mask, lp - 0.2, lp), mask), 8)  # the per-token reading: beta falls
    assert ctl.value < 0.1 * (1 - 0.19 * 8 / 10_000)
