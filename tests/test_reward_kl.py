"""helpers.reward_kl: the best-of-n KL and curve, the temperature KL, the world's tokens, reward_kl.json."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import reward_kl
from helpers.reward_kl import (
    WorldTokens,
    best_of_n_curve,
    best_of_n_kl,
    expected_best_of_n,
    reward_kl_path,
    temperature_kl,
    write_reward_kl,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_plot_dir(monkeypatch):
    monkeypatch.delenv("COURSE_PLOT_DIR", raising=False)


# ----------------------------------------------------------------------------- oracles


def best_of_n_pmf(p: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """Exact distribution of the best of n draws from the categorical p, by distinct scores: F_i^n - F_{i-1}^n."""
    order = score.argsort()
    ps = p[order].double()
    upper = ps.cumsum(0).clamp(max=1.0)
    pmf = torch.empty_like(ps)
    pmf[order] = upper**n - (upper - ps).clamp(min=0.0) ** n
    return pmf


def kl_divergence(q: torch.Tensor, p: torch.Tensor) -> float:
    keep = q > 0
    return float((q[keep] * (q[keep].log() - p[keep].double().log())).sum())


def random_categorical(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(k, generator=g, dtype=torch.float64) + 0.05
    return p / p.sum(), torch.rand(k, generator=g, dtype=torch.float64)  # probabilities, distinct scores


# ----------------------------------------------------------------------------- best-of-n KL


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(3.1745, abs=1e-4)
    kls = [best_of_n_kl(n) for n in range(1, 200)]
    assert all(b > a for a, b in zip(kls, kls[1:]))
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError):
            best_of_n_kl(bad)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_best_of_n_kl_is_the_limit_of_exact_enumeration(n):
    """Many small atoms with distinct scores: the exact KL approaches the formula, from below."""
    p, score = random_categorical(1000, seed=n)
    exact = kl_divergence(best_of_n_pmf(p, score, n), p)
    assert exact <= best_of_n_kl(n) + 1e-12
    assert exact == pytest.approx(best_of_n_kl(n), abs=1e-3)


def test_best_of_n_kl_is_an_upper_bound_with_ties():
    """A judge with few values (ties): best-of-n moves less than the formula says."""
    p = torch.full((12,), 1 / 12, dtype=torch.float64)
    level = torch.arange(12) // 4  # three score levels, four atoms each
    for n in (2, 8, 32):
        # Among tied atoms the best-of-n draw is uniform: group the mass by level.
        levels = torch.stack([p[level == v].sum() for v in range(3)])
        group = best_of_n_pmf(levels, torch.arange(3, dtype=torch.float64), n)
        q = group[level] / 4
        assert kl_divergence(q, p) < best_of_n_kl(n) - 0.02


def test_best_of_n_kl_against_monte_carlo():
    """Sample best-of-n for real and estimate its KL from the empirical distribution (plug-in)."""
    g = torch.Generator().manual_seed(7)
    # A small categorical: the simulation matches the exact enumeration, which stays below the formula.
    p, score = random_categorical(6, seed=3)
    n, draws = 4, 200_000
    samples = torch.multinomial(p, draws * n, replacement=True, generator=g).view(draws, n)
    best = samples.gather(1, score[samples].argmax(dim=1, keepdim=True)).squeeze(1)
    freq = torch.bincount(best, minlength=6).double() / draws
    exact = best_of_n_pmf(p, score, n)
    assert torch.all((freq - exact).abs() <= 5 * (exact * (1 - exact) / draws).sqrt() + 1e-9), (freq, exact)
    assert kl_divergence(freq, p) == pytest.approx(kl_divergence(exact, p), abs=5e-3)
    assert kl_divergence(exact, p) < best_of_n_kl(n)
    # Nearly continuous scores (2,000 equal atoms): the simulated KL is the formula's.
    k, n, draws = 2000, 8, 400_000
    p = torch.full((k,), 1 / k, dtype=torch.float64)
    score = torch.randperm(k, generator=g).double()
    samples = torch.multinomial(p, draws * n, replacement=True, generator=g).view(draws, n)
    best = samples.gather(1, score[samples].argmax(dim=1, keepdim=True)).squeeze(1)
    freq = torch.bincount(best, minlength=k).double() / draws
    plug_in_bias = (k - 1) / (2 * draws)  # the plug-in estimate of a KL overshoots by about this much
    assert kl_divergence(freq, p) - plug_in_bias == pytest.approx(best_of_n_kl(n), abs=0.02)


# ----------------------------------------------------------------------------- expected best-of-n


def brute_force_best_of_n(select: torch.Tensor, judge: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over every n-subset of each row: the judged score of the subset's highest selected sample."""
    out = []
    for s, j in zip(select.tolist(), judge.tolist()):
        picks = [j[max(subset, key=lambda i: (s[i], i))] for subset in itertools.combinations(range(len(s)), n)]
        out.append(sum(picks) / len(picks))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_expected_best_of_n_averages_every_subset(n):
    g = torch.Generator().manual_seed(n)
    select, judge = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    got = expected_best_of_n(select, n, judge)
    torch.testing.assert_close(got, brute_force_best_of_n(select, judge, n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(expected_best_of_n(select, n), brute_force_best_of_n(select, select.double(), n))


def test_expected_best_of_n_ends():
    select = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]])  # second row: all tied
    judge = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    torch.testing.assert_close(expected_best_of_n(select, 1, judge), judge.double().mean(1))
    torch.testing.assert_close(expected_best_of_n(select, 4, judge), torch.tensor([3.0, 5.0], dtype=torch.float64))
    # Large m (log-space weights): still a probability distribution over the ranks.
    ones = torch.ones(1, 500)
    for n in (1, 250, 500):
        assert expected_best_of_n(torch.randn(1, 500), n, ones).item() == pytest.approx(1.0, abs=1e-9)


def test_expected_best_of_n_matches_subsampling():
    g = torch.Generator().manual_seed(11)
    select, judge = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    n, draws = 4, 20_000
    idx = torch.rand(draws, 3, 16, generator=g).argsort(dim=-1)[..., :n]  # uniform n-subsets, per row
    picked = idx.gather(-1, select.expand(draws, 3, 16).gather(-1, idx).argmax(-1, keepdim=True))
    mc = judge.expand(draws, 3, 16).gather(-1, picked).squeeze(-1).double().mean(0)
    torch.testing.assert_close(expected_best_of_n(select, n, judge), mc, atol=0.03, rtol=0)


def test_expected_best_of_n_errors():
    with pytest.raises(ValueError):
        expected_best_of_n(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError):
        expected_best_of_n(torch.zeros(2, 3), 0)
    with pytest.raises(ValueError):
        expected_best_of_n(torch.zeros(2, 3), 2, torch.zeros(3, 2))
    with pytest.raises(ValueError):
        expected_best_of_n(torch.zeros(6), 2)


def test_best_of_n_curve():
    g = torch.Generator().manual_seed(5)
    select = torch.randn(10, 64, generator=g)
    curve = best_of_n_curve(select, [1, 2, 4, 8, 16, 32, 64])
    assert set(curve) == {"n", "kl", "score", "sem"}
    assert curve["kl"] == [best_of_n_kl(n) for n in curve["n"]]
    assert all(b > a for a, b in zip(curve["score"], curve["score"][1:]))  # a judge's own pick only improves
    assert curve["score"][0] == pytest.approx(select.double().mean().item())
    assert curve["score"][-1] == pytest.approx(select.double().amax(1).mean().item())
    assert math.isnan(best_of_n_curve(select[:1], [1, 2])["sem"][0])
    with pytest.raises(ValueError):
        best_of_n_curve(select, [2, 1])


# ----------------------------------------------------------------------------- temperature KL


def closed_form_temperature_kl(z: list[float], t: float) -> float:
    """KL(p_T || p_1) = (1/T - 1) E_{p_T}[z] - log sum e^{z/T} + log sum e^z (p_T = softmax(z / T))."""
    zt = [v / t for v in z]
    log_zt = math.log(sum(math.exp(v) for v in zt))
    p_t = [math.exp(v - log_zt) for v in zt]
    return (1 / t - 1) * sum(p * v for p, v in zip(p_t, z)) - log_zt + math.log(sum(math.exp(v) for v in z))


@pytest.mark.parametrize("t", [0.3, 0.5, 0.9, 1.0, 1.1, 1.5, 3.0])
def test_temperature_kl_against_the_closed_form(t):
    g = torch.Generator().manual_seed(int(t * 10))
    logits = 2 * torch.randn(3, 5, generator=g)
    got = temperature_kl(logits, t)
    assert got.shape == (3,) and got.dtype == torch.float64
    expected = torch.tensor([closed_form_temperature_kl(row, t) for row in logits.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_temperature_kl_of_a_coin():
    """Two outcomes: KL of Bernoulli(sigmoid(d / T)) to Bernoulli(sigmoid(d))."""
    d, t = 1.3, 0.4
    a, b = 1 / (1 + math.exp(-d / t)), 1 / (1 + math.exp(-d))
    expected = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    assert temperature_kl(torch.tensor([d, 0.0]), t).item() == pytest.approx(expected, rel=1e-9)


def test_temperature_kl_grows_away_from_one():
    """d/dθ KL(p_θ || p_1) = (θ - 1) Var_θ(z) with θ = 1/T: monotone on each side of T = 1."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    low = [temperature_kl(logits, t) for t in (0.3, 0.5, 0.7, 0.9, 1.0)]
    high = [temperature_kl(logits, t) for t in (1.0, 1.1, 1.3, 1.5)]
    assert torch.all(low[-1] == 0) and torch.all(high[0] == 0)
    assert all(torch.all(a > b) for a, b in zip(low, low[1:]))
    assert all(torch.all(b > a) for a, b in zip(high, high[1:]))


def test_temperature_kl_ignores_impossible_tokens_and_checks_inputs():
    logits = torch.tensor([[0.5, -1.0, float("-inf")]])
    torch.testing.assert_close(temperature_kl(logits, 0.5), temperature_kl(logits[:, :2], 0.5))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError):
            temperature_kl(logits, bad)
    with pytest.raises(ValueError):
        temperature_kl(torch.tensor([1, 2]), 0.5)


# ----------------------------------------------------------------------------- the world's tokens


def test_world_tokens_restrict_keeps_the_kept_logits():
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)).eval()
    tokens = WorldTokens(torch.tensor([2, 5, 11, 17, 39]))
    small = tokens.restrict(model)
    assert small.config.vocab_size == 5 and model.config.vocab_size == 40
    assert model.wte.weight.shape == (40, 8)  # the original is untouched
    ids = torch.tensor([[5, 11, 2, 39]])
    local = torch.tensor([tokens.local(ids[0])])
    assert local.tolist() == [[1, 2, 0, 4]] and tokens.to_gpt2(local).tolist() == ids.tolist()
    mask = torch.ones_like(ids)
    pos = torch.arange(4)[None]
    with torch.no_grad():
        full = model(ids, mask, pos)[..., tokens.gpt2_ids]
        got = small(local, mask, pos)
    torch.testing.assert_close(got, full)
    with pytest.raises(ValueError, match="not in this vocabulary"):
        tokens.local([3])


def test_world_tokens_of_the_world_hold_eos():
    tokens = WorldTokens.of_world()
    assert 300 < tokens.size < 1000
    assert tokens.to_gpt2(torch.tensor([tokens.eos_id])).item() == 50256
    assert torch.all(tokens.gpt2_ids[1:] > tokens.gpt2_ids[:-1])


# ----------------------------------------------------------------------------- reward_kl.json


def test_write_reward_kl(monkeypatch, tmp_path):
    assert reward_kl_path("04_reward_model") is None
    assert write_reward_kl("04_reward_model", {"kl": [0.0]}) is None  # no plot directory: nothing written
    monkeypatch.setenv("COURSE_PLOT_DIR", str(tmp_path / "plots" / "04_reward_model"))
    data = {"n": [1, 2], "kl": torch.tensor([0.0, 0.19]), "gold": [float("nan"), 1.5], "meta": {"split": "test"}}
    path = write_reward_kl("04_reward_model", data)
    assert path == tmp_path / "04_reward_model" / "reward_kl.json"
    got = json.loads(path.read_text())
    assert got["notebook"] == "04_reward_model" and got["n"] == [1, 2] and got["gold"] == [None, 1.5]
    assert got["kl"] == pytest.approx([0.0, 0.19]) and got["meta"] == {"split": "test"}
    with pytest.raises(TypeError):
        reward_kl.to_json(object())


def test_notebook_04_writes_its_best_of_n_curve(tmp_path):
    """The 04 demo, tiny (as grading runs it): reward_kl.json next to the plots, KL monotone in n."""
    from autograder.demo import execute_notebook

    res = execute_notebook(ROOT / "notebooks" / "04_reward_model" / "04_reward_model.ipynb", tmp_path, tiny=True,
                           cell_timeout=120, progress=False)
    assert res.error is None, res.error
    assert (tmp_path / "plots" / "04_reward_model" / "04_reward_model_best_of_n.png").is_file()
    data = json.loads((tmp_path / "04_reward_model" / "reward_kl.json").read_text())
    n, kl = data["n"], data["kl"]
    assert n[0] == 1 and all(b > a for a, b in zip(n, n[1:]))
    assert kl[0] == 0.0 and all(b > a for a, b in zip(kl, kl[1:]))
    assert kl == pytest.approx([best_of_n_kl(v) for v in n])
    for key in ("learned", "gold", "gold_if_gold_picks"):
        assert len(data[key]) == len(n) and all(isinstance(v, float) and math.isfinite(v) for v in data[key]), key
    # The learned reward judges its own pick, so its curve can only rise.
    assert all(b >= a - 1e-9 for a, b in zip(data["learned"], data["learned"][1:]))
    assert data["samples_per_prompt"] == n[-1]
