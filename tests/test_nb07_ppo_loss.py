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
