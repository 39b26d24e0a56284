"""Notebook 05 (value head): reference code against independent oracles, and the test cells' bar.

Oracles are plain Python loops over the masked positions of each row, closed forms (a score on the
last token), the later notebooks' reference code where it computes the same quantity (GAE with
lambda = 1 gives the Monte-Carlo returns; the unclipped value loss of notebook 07), hand-built
linear maps on GPT-2 hidden states, and torch.autograd.gradcheck. Random cases come from seeded
generators: variable-length rows, right/left padding, holes, empty rows, float32 and float64.

The test cells themselves are checked from both sides: the reference passes all of them (silently:
no stderr, no warnings); each plausible wrong implementation fails at least one cell that grades its
math; and a correct implementation without the input checks keeps every point except those of the
validation cells.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cells import failing, graded_cells, run_silently, run_test_cells, surviving_variants, validation_cell_problems
from cases import DTYPES, TOL, cases, close, random_mask
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_value_head" / "05_value_head.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


# ----------------------------------------------------------------------------- random cases


def positions(mask_row: torch.Tensor) -> list[int]:
    return [t for t in range(mask_row.shape[0]) if bool(mask_row[t])]


def returns_oracle(r: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    B, T = r.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        pos = positions(mask[b])
        for i, t in enumerate(pos):
            out[b, t] = sum(gamma ** k * float(r[b, u]) for k, u in enumerate(pos[i:]))
    return out


def selected(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return [float(x[tuple(idx)]) for idx in mask.bool().nonzero().tolist()]


def ev_oracle(v: torch.Tensor, r: torch.Tensor, mask: torch.Tensor) -> float:
    rs, vs = selected(r, mask), selected(v, mask)
    n = len(rs)
    mr = sum(rs) / n
    es = [a - b for a, b in zip(rs, vs)]
    me = sum(es) / n
    var_r = sum((x - mr) ** 2 for x in rs) / n
    var_e = sum((x - me) ** 2 for x in es) / n
    return math.nan if var_r == 0 else 1 - var_e / var_r


def tiny_gpt2(seed: int, n_embd: int = 12):
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2(GPT2Config(vocab_size=40, n_positions=24, n_embd=n_embd, n_layer=2, n_head=3))


def tiny_reward_model(seed: int):
    from minirlhf.reward_model import RewardModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1000)
        rm = RewardModel.from_policy(tiny_gpt2(seed))
        with torch.no_grad():
            rm.head.bias.fill_(0.3)
    return rm


def batch(seed: int):
    from minirlhf.sft import position_ids_from_mask

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (4, 9), generator=gen)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0],
                         [1] * 9, [0, 1, 1, 1, 1, 1, 1, 1, 0]])
    return ids, mask, position_ids_from_mask(mask) + 1


# ----------------------------------------------------------------------------- contract for notebook 08


def test_exported_module_has_the_contract():
    from minirlhf import value_head

    expected = {
        "monte_carlo_returns": ["rewards", "mask", "gamma"],
        "value_loss": ["values", "returns", "mask"],
        "explained_variance": ["values", "returns", "mask"],
        "masked_mean": ["x", "mask"],
        "check_masked_inputs": ["fn", "mask", "nonempty", "tensors"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(value_head, name)).parameters) == params, name
    assert list(inspect.signature(value_head.ValueHead).parameters) == ["n_embd", "init", "reward_model"]
    assert inspect.signature(value_head.ValueHead).parameters["init"].default == "zero"
    assert list(inspect.signature(value_head.PolicyWithValue).parameters) == ["policy", "value_head", "value_trunk"]
    assert list(inspect.signature(value_head.PolicyWithValue.shared).parameters) == ["policy", "init", "reward_model"]
    assert list(inspect.signature(value_head.PolicyWithValue.separate).parameters) == ["policy", "reward_model"]
    assert list(inspect.signature(value_head.PolicyWithValue.forward).parameters) == [
        "self", "input_ids", "attention_mask", "position_ids", "logits_from"]


def test_release_needs_only_earlier_notebooks():
    """Notebook 05 ships with minirlhf modules of notebooks 01-04 only: its library may import nothing later."""
    from helpers.notebook import library_source, read_notebook

    code = "\n".join(src for _, src in library_source(read_notebook(NOTEBOOK)))
    for later in ("gae", "ppo_loss", "value_head"):
        assert f"minirlhf.{later}" not in code and f"from minirlhf import {later}" not in code, later


# ----------------------------------------------------------------------------- Monte-Carlo returns


@pytest.mark.parametrize("dtype", DTYPES)
def test_monte_carlo_returns_matches_loop(nb, dtype):
    gammas = [1.0, 0.99, 0.9, 0.5, 0.0, 0.73]
    for i, (gen, B, T, mask) in enumerate(cases(1, 48)):
        r = torch.randn(B, T, generator=gen).to(dtype)
        gamma = gammas[i % len(gammas)]
        garbage = r.masked_fill(~mask, float("nan"))
        got = nb.monte_carlo_returns(garbage, [mask, mask.long(), mask.to(dtype)][i % 3], gamma)
        close(got, returns_oracle(r, mask, gamma), dtype, f"returns gamma={gamma} mask={mask.int().tolist()}")
        assert not got.requires_grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_monte_carlo_returns_equal_gae_with_lambda_one(nb, dtype):
    """Notebook 06: returns of GAE(lambda=1) = A + V = discounted reward-to-go, whatever V is."""
    from minirlhf.gae import compute_gae

    for gen, B, T, mask in cases(2, 30):
        r = torch.randn(B, T, generator=gen).to(dtype)
        v = torch.randn(B, T, generator=gen).to(dtype)
        gamma = float(torch.rand(1, generator=gen))
        _, gae_returns = compute_gae(r, v, mask, gamma, 1.0)
        close(nb.monte_carlo_returns(r, mask, gamma), gae_returns.double(), dtype, "returns vs GAE(lambda=1)")


def test_monte_carlo_returns_closed_forms(nb):
    T, lens = 10, [10, 4, 1, 7]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lens], dtype=torch.bool)
    score = torch.tensor([0.5, -1.5, 2.0, 3.0], dtype=torch.float64)
    r = torch.zeros(4, T, dtype=torch.float64)
    r[torch.arange(4), torch.tensor(lens) - 1] = score
    for gamma in (1.0, 0.95, 0.5):
        exp = torch.zeros(4, T, dtype=torch.float64)
        for b, n in enumerate(lens):
            for t in range(n):
                exp[b, t] = gamma ** (n - 1 - t) * float(score[b])
        close(nb.monte_carlo_returns(r, mask, gamma), exp, torch.float64, f"terminal score, gamma={gamma}")
    # Holes are not time steps; left padding gives the right-padded returns, shifted.
    holes = torch.tensor([[1, 0, 0, 1, 0, 1]])
    close(nb.monte_carlo_returns(torch.tensor([[1.0, 9.0, 9.0, 1.0, 9.0, 1.0]], dtype=torch.float64), holes, 0.5),
          [[1.75, 0.0, 0.0, 1.5, 0.0, 1.0]], torch.float64, "holes")
    right = nb.monte_carlo_returns(r, mask, 0.9)
    left = nb.monte_carlo_returns(torch.stack([row.roll(T - n) for row, n in zip(r, lens)]),
                                  torch.stack([row.roll(T - n) for row, n in zip(mask, lens)]), 0.9)
    for b, n in enumerate(lens):
        torch.testing.assert_close(left[b, T - n:], right[b, :n])
    # Empty rows and an empty batch of responses: zeros, no error.
    assert (nb.monte_carlo_returns(torch.randn(2, 3), torch.zeros(2, 3), 0.9) == 0).all()


def test_monte_carlo_returns_is_detached_and_pure(nb):
    r = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]])
    before, version = r.detach().clone(), r._version
    out = nb.monte_carlo_returns(r, mask, 0.9)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(r.detach(), before) and r._version == version


def test_monte_carlo_returns_errors(nb):
    for gamma in (-0.01, 1.01, 2.0):
        with pytest.raises(ValueError):
            nb.monte_carlo_returns(torch.zeros(2, 3), torch.ones(2, 3), gamma)
    with pytest.raises(ValueError):
        nb.monte_carlo_returns(torch.zeros(2, 3), torch.ones(3, 2), 1.0)
    with pytest.raises(TypeError):
        nb.monte_carlo_returns(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), 1.0)


# ----------------------------------------------------------------------------- value loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_value_loss_matches_loop_and_notebook_07(nb, dtype):
    from minirlhf.ppo_loss import clipped_value_loss

    for gen, B, T, mask in cases(3, 40):
        if not mask.any():
            continue
        v = torch.randn(B, T, generator=gen).to(dtype) * 2
        r = torch.randn(B, T, generator=gen).to(dtype)
        pairs = list(zip(selected(v, mask), selected(r, mask)))
        exp = 0.5 * sum((a - b) ** 2 for a, b in pairs) / len(pairs)
        got = nb.value_loss(v.masked_fill(~mask, math.inf), r.masked_fill(~mask, math.nan), mask.to(dtype))
        close(got, torch.tensor(exp, dtype=torch.float64), dtype, "value_loss")
        close(nb.value_loss(v, r, mask), clipped_value_loss(v, v, r, mask, clip_range=None).double(), dtype,
              "value_loss vs notebook 07's clipped_value_loss(clip_range=None)")


def test_value_loss_gradient(nb):
    gen = torch.Generator().manual_seed(4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1]])
    v = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    r = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: nb.value_loss(x, r, mask), (v,))
    gv, gr = torch.autograd.grad(nb.value_loss(v, r, mask), (v, r), allow_unused=True)
    torch.testing.assert_close(gv, mask.double() * (v - r).detach() / mask.sum())
    assert gr is None or (gr == 0).all(), "no gradient may reach the returns"


def test_value_loss_errors(nb):
    with pytest.raises(ValueError):
        nb.value_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        nb.value_loss(torch.zeros(2, 3), torch.zeros(3, 2), torch.ones(2, 3))
    with pytest.raises(TypeError):
        nb.value_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))


# ----------------------------------------------------------------------------- explained variance


@pytest.mark.parametrize("dtype", DTYPES)
def test_explained_variance_matches_loop(nb, dtype):
    for gen, B, T, mask in cases(5, 40, kinds=("right", "left", "holes")):
        if int(mask.sum()) < 2:
            continue
        r = torch.randn(B, T, generator=gen).to(dtype) * 3
        v = (r + torch.randn(B, T, generator=gen) * float(torch.rand(1, generator=gen)) * 4).to(dtype)
        got = nb.explained_variance(v.masked_fill(~mask, math.nan), r.masked_fill(~mask, math.inf), mask)
        assert type(got) is float
        exp = ev_oracle(v, r, mask)
        if math.isnan(exp):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(exp, abs=1e-4 if dtype == torch.float32 else 1e-10)


def test_explained_variance_landmarks(nb):
    gen = torch.Generator().manual_seed(6)
    r = torch.randn(5, 7, dtype=torch.float64, generator=gen)
    mask = torch.ones(5, 7)
    assert nb.explained_variance(r.clone(), r, mask) == 1.0
    assert nb.explained_variance(torch.full_like(r, r.mean().item()), r, mask) == pytest.approx(0.0, abs=1e-12)
    v = r + 0.3 * torch.randn(5, 7, dtype=torch.float64, generator=gen)
    assert nb.explained_variance(v - 4.0, r, mask) == pytest.approx(nb.explained_variance(v, r, mask), abs=1e-12)
    assert nb.explained_variance(r + 5 * torch.randn(5, 7, dtype=torch.float64, generator=gen), r, mask) < 0
    # CleanRL's formula on the selected entries.
    sel_r, sel_v = r.flatten(), v.flatten()
    cleanrl = 1 - (sel_r - sel_v).var(unbiased=False) / sel_r.var(unbiased=False)
    assert nb.explained_variance(v, r, mask) == pytest.approx(cleanrl.item(), abs=1e-12)
    assert math.isnan(nb.explained_variance(r, torch.full_like(r, 1.5), mask))
    assert math.isnan(nb.explained_variance(r, r, torch.tensor([[1] + [0] * 6] + [[0] * 7] * 4)))


def test_explained_variance_never_warns(nb):
    v = torch.randn(2, 3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb.explained_variance(v * 2, torch.randn(2, 3), torch.ones(2, 3))


def test_explained_variance_errors(nb):
    with pytest.raises(ValueError):
        nb.explained_variance(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        nb.explained_variance(torch.zeros(2, 3), torch.ones(2, 4), torch.ones(2, 3))


# ----------------------------------------------------------------------------- the value head


def test_value_head_is_a_linear_map_at_every_position(nb):
    gen = torch.Generator().manual_seed(7)
    head = nb.ValueHead(5)
    assert sum(p.numel() for p in head.parameters()) == 6
    h = torch.randn(3, 4, 5, generator=gen)
    assert (head(h) == 0).all() and head(h).shape == (3, 4)
    with torch.no_grad():
        head.linear.weight.normal_(generator=gen)
        head.linear.bias.fill_(-0.2)
    w, b = head.linear.weight[0].tolist(), head.linear.bias.item()
    exp = [[sum(wc * float(h[i, t, c]) for c, wc in enumerate(w)) + b for t in range(4)] for i in range(3)]
    torch.testing.assert_close(head(h).double(), torch.tensor(exp, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    assert head(torch.randn(1, 1, 5)).shape == (1, 1)
    assert head(torch.randn(6, 5)).shape == (6,)


def test_value_head_copies_the_reward_model_head(nb):
    rm = tiny_reward_model(8)
    head = nb.ValueHead(12, init="reward_model", reward_model=rm)
    h = torch.randn(2, 3, 12)
    torch.testing.assert_close(head(h), rm.head(h).squeeze(-1))
    with torch.no_grad():
        head.linear.weight.add_(1.0)
    assert not torch.equal(head(h), rm.head(h).squeeze(-1)), "the heads must not share storage"
    for bad in ("xavier", "Zero", ""):
        with pytest.raises(ValueError):
            nb.ValueHead(12, init=bad)
    with pytest.raises(ValueError):
        nb.ValueHead(12, init="reward_model")


# ----------------------------------------------------------------------------- policy with value


def count_passes(*trunks):
    counts = [[] for _ in trunks]
    handles = [t.wte.register_forward_hook(lambda *a, c=c: c.append(1)) for t, c in zip(trunks, counts)]
    return counts, handles


def test_shared_design(nb):
    policy = tiny_gpt2(9)
    model = nb.PolicyWithValue.shared(policy)
    assert model.policy is policy and model.value_trunk is None
    with torch.no_grad():
        model.value_head.linear.weight.normal_()
    ids, mask, pos = batch(10)
    counts, handles = count_passes(policy)
    logits, values = model(ids, mask, pos)
    for h in handles:
        h.remove()
    assert [len(c) for c in counts] == [1]
    torch.testing.assert_close(logits, policy(ids, mask, pos))
    torch.testing.assert_close(values, model.value_head.linear(policy.hidden_states(ids, mask, pos)).squeeze(-1))
    # The positions passed in are used: the mask-derived ones give other values.
    _, values_default = model(ids, mask)
    assert not torch.allclose(values, values_default)
    values.sum().backward()
    assert policy.h[0].attn["c_attn"].weight.grad.abs().sum() > 0, "the shared design trains the policy's trunk"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in policy.parameters()) + 13


def test_separate_design(nb):
    policy, rm = tiny_gpt2(11), tiny_reward_model(12)
    rm_state = copy.deepcopy(rm.state_dict())
    model = nb.PolicyWithValue.separate(policy, rm)
    assert model.policy is policy and model.value_trunk is not rm.trunk
    ids, mask, pos = batch(13)
    counts, handles = count_passes(policy, model.value_trunk)
    logits, values = model(ids, mask, pos)
    for h in handles:
        h.remove()
    assert [len(c) for c in counts] == [1, 1]
    torch.testing.assert_close(logits, policy(ids, mask, pos))
    torch.testing.assert_close(values, rm.head(rm.trunk.hidden_states(ids, mask, pos)).squeeze(-1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ((values - 1.0) ** 2).sum().backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in policy.parameters())
    assert model.value_trunk.wte.weight.grad is not None
    opt.step()
    for k, v in rm.state_dict().items():
        assert torch.equal(v, rm_state[k]), f"training the critic changed the reward model's {k}"


# ----------------------------------------------------------------------------- the test cells' bar


def test_reference_passes_every_test_cell_silently(nb):
    results, stderr, warned = run_silently(NOTEBOOK, nb)
    assert failing(results) == {}
    assert stderr == "" and not warned, (stderr, warned)


# Wrong variants, written independently of the notebook (torch only), as a student might.

def _mc_all_columns(rewards, mask, gamma):
    """Discounts every column, padding included (padding rewards zeroed): holes count as time steps."""
    with torch.no_grad():
        m = mask.bool()
        r = torch.where(m, rewards, torch.zeros((), dtype=rewards.dtype))
        out, running = torch.zeros_like(r), torch.zeros_like(r[:, 0])
        for t in reversed(range(r.shape[1])):
            running = r[:, t] + gamma * running
            out[:, t] = torch.where(m[:, t], running, torch.zeros((), dtype=r.dtype))
        return out


def _mc_plain_cumsum(rewards, mask, gamma):
    """Reverse cumulative sum over all columns: no discount, no masking of the output."""
    with torch.no_grad():
        r = torch.where(mask.bool(), rewards, torch.zeros((), dtype=rewards.dtype))
        return r.flip(1).cumsum(1).flip(1)


def _mc_factory(*, shift=0, detach=True):
    def returns(rewards, mask, gamma):
        m = mask.bool()
        r = torch.where(m, rewards, torch.zeros((), dtype=rewards.dtype))
        cols, running = [], torch.zeros_like(r[:, 0])
        for t in reversed(range(r.shape[1])):
            # shift=1: G_t = sum_k gamma^(k+1) r_{t+k}, the exponent off by one
            new = gamma ** shift * r[:, t] + gamma * running
            running = torch.where(m[:, t], new, running)
            cols.append(torch.where(m[:, t], running, torch.zeros((), dtype=r.dtype)))
        out = torch.stack(cols[::-1], dim=1)
        return out.detach() if detach else out
    return returns


def _mc_arithmetic_mask(rewards, mask, gamma):
    """Skips padding by arithmetic, m * new + (1 - m) * old: 0 * nan = nan leaks from padding rewards."""
    with torch.no_grad():
        m = mask.to(rewards.dtype)
        out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
        for t in reversed(range(rewards.shape[1])):
            running = m[:, t] * (rewards[:, t] + gamma * running) + (1 - m[:, t]) * running
            out[:, t] = m[:, t] * running
        return out


def _masked_mean(x, mask):
    m = mask.bool()
    return torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum() / m.sum()


def _loss_without_half(values, returns, mask):
    return _masked_mean((values - returns.detach()) ** 2, mask)


def _loss_mean_over_all(values, returns, mask):
    return 0.5 * torch.where(mask.bool(), (values - returns.detach()) ** 2, torch.zeros((), dtype=values.dtype)).mean()


def _loss_returns_not_detached(values, returns, mask):
    return 0.5 * _masked_mean((values - returns) ** 2, mask)


def _loss_sum(values, returns, mask):
    return 0.5 * torch.where(mask.bool(), (values - returns.detach()) ** 2, torch.zeros((), dtype=values.dtype)).sum()


def _masked_var(x, mask, unbiased=False):
    m = mask.bool()
    n = int(m.sum())
    mean = _masked_mean(x, m)
    return torch.where(m, (x - mean) ** 2, torch.zeros((), dtype=x.dtype)).sum() / (n - 1 if unbiased else n)


def _ev_factory(kind):
    def ev(values, returns, mask):
        with torch.no_grad():
            var_r = _masked_var(returns, mask)
            if kind == "no_nan":
                return 1.0 - (_masked_var(returns - values, mask) / var_r).item()
            if var_r.item() == 0:
                return float("nan")
            if kind == "values":
                return 1.0 - (_masked_var(values, mask) / var_r).item()
            if kind == "mixed":
                return 1.0 - (_masked_var(returns - values, mask, unbiased=True) / var_r).item()
            if kind == "tensor":
                return 1.0 - _masked_var(returns - values, mask) / var_r
            if kind == "unmasked":
                e = torch.where(mask.bool(), returns - values, torch.zeros((), dtype=values.dtype))
                r = torch.where(mask.bool(), returns, torch.zeros((), dtype=values.dtype))
                return 1.0 - (e.var(unbiased=False) / r.var(unbiased=False)).item()
            raise AssertionError(kind)
    return ev


def _value_head_variant(nb, *, forward=None, init=None):
    methods = {}
    if forward is not None:
        methods["forward"] = forward
    if init is not None:
        methods["__init__"] = init
    return type("WrongValueHead", (nb.ValueHead,), methods)


def _policy_variant(nb, **methods):
    return type("WrongPolicyWithValue", (nb.PolicyWithValue,), methods)


def wrong_variants(nb):
    """(description, {name: wrong definition}, cell that must fail)."""
    ValueHead = nb.ValueHead

    def last_position_only(self, hidden_states):
        v = self.linear(hidden_states[..., -1:, :]).squeeze(-1)  # [B, 1]
        return v.expand(hidden_states.shape[:-1])

    def squeeze_all(self, hidden_states):
        return self.linear(hidden_states).squeeze()

    def init_keeps_default(self, n_embd, init="zero", reward_model=None):
        nn.Module.__init__(self)
        self.linear = nn.Linear(n_embd, 1)
        if init == "reward_model":
            with torch.no_grad():
                self.linear.weight.copy_(reward_model.head.weight)
                self.linear.bias.copy_(reward_model.head.bias)

    def init_shares_rm_head(self, n_embd, init="zero", reward_model=None):
        nn.Module.__init__(self)
        self.linear = nn.Linear(n_embd, 1)
        if init == "reward_model":
            self.linear = reward_model.head
        else:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def init_weight_only(self, n_embd, init="zero", reward_model=None):
        nn.Module.__init__(self)
        self.linear = nn.Linear(n_embd, 1)
        with torch.no_grad():
            self.linear.bias.zero_()
            if init == "reward_model":
                self.linear.weight.copy_(reward_model.head.weight)
            else:
                self.linear.weight.zero_()

    def forward_two_passes(self, input_ids, attention_mask, position_ids=None, logits_from=0):
        logits = self.policy(input_ids, attention_mask, position_ids)[:, logits_from:]
        trunk = self.policy if self.value_trunk is None else self.value_trunk
        return logits, self.value_head(trunk.hidden_states(input_ids, attention_mask, position_ids))

    def forward_detached(self, input_ids, attention_mask, position_ids=None, logits_from=0):
        h = self.policy.hidden_states(input_ids, attention_mask, position_ids)
        hv = h.detach() if self.value_trunk is None else self.value_trunk.hidden_states(input_ids, attention_mask, position_ids)
        return self.policy.lm_head(h[:, logits_from:]), self.value_head(hv)

    def forward_no_positions(self, input_ids, attention_mask, position_ids=None, logits_from=0):
        h = self.policy.hidden_states(input_ids, attention_mask)
        hv = h if self.value_trunk is None else self.value_trunk.hidden_states(input_ids, attention_mask)
        return self.policy.lm_head(h[:, logits_from:]), self.value_head(hv)

    def forward_ignores_logits_from(self, input_ids, attention_mask, position_ids=None, logits_from=0):
        h = self.policy.hidden_states(input_ids, attention_mask, position_ids)
        hv = h if self.value_trunk is None else self.value_trunk.hidden_states(input_ids, attention_mask, position_ids)
        return self.policy.lm_head(h), self.value_head(hv)

    def forward_slices_values_too(self, input_ids, attention_mask, position_ids=None, logits_from=0):
        h = self.policy.hidden_states(input_ids, attention_mask, position_ids)
        hv = h if self.value_trunk is None else self.value_trunk.hidden_states(input_ids, attention_mask, position_ids)
        return self.policy.lm_head(h[:, logits_from:]), self.value_head(hv[:, logits_from:])

    @classmethod
    def separate_shares_rm_trunk(cls, policy, reward_model):
        return cls(policy, ValueHead(reward_model.trunk.config.n_embd, "reward_model", reward_model), reward_model.trunk)

    @classmethod
    def separate_from_policy(cls, policy, reward_model):
        return cls(policy, ValueHead(policy.config.n_embd, "reward_model", reward_model), copy.deepcopy(policy))

    @classmethod
    def separate_zero_head(cls, policy, reward_model):
        return cls(policy, ValueHead(policy.config.n_embd), copy.deepcopy(reward_model.trunk))

    @classmethod
    def shared_copies_policy(cls, policy, init="zero", reward_model=None):
        return cls(copy.deepcopy(policy), ValueHead(policy.config.n_embd, init, reward_model))

    return [
        ("returns discount padding columns too", {"monte_carlo_returns": _mc_all_columns}, "test_monte_carlo_returns"),
        ("returns = plain reverse cumsum over all positions", {"monte_carlo_returns": _mc_plain_cumsum},
         "test_monte_carlo_returns"),
        ("gamma exponent off by one", {"monte_carlo_returns": _mc_factory(shift=1)}, "test_monte_carlo_returns"),
        ("returns keep the gradient", {"monte_carlo_returns": _mc_factory(detach=False)}, "test_monte_carlo_returns"),
        ("rewards multiplied by the mask (nan leaks)", {"monte_carlo_returns": _mc_arithmetic_mask},
         "test_monte_carlo_returns"),
        ("value loss without the 1/2", {"value_loss": _loss_without_half}, "test_value_loss"),
        ("value loss averaged over padding too", {"value_loss": _loss_mean_over_all}, "test_value_loss"),
        ("value loss sends gradient into the returns", {"value_loss": _loss_returns_not_detached}, "test_value_loss"),
        ("value loss summed", {"value_loss": _loss_sum}, "test_value_loss"),
        ("EV = 1 - Var(values) / Var(returns)", {"explained_variance": _ev_factory("values")}, "test_explained_variance"),
        ("EV mixes unbiased and biased variances", {"explained_variance": _ev_factory("mixed")},
         "test_explained_variance"),
        ("EV without the nan for constant returns", {"explained_variance": _ev_factory("no_nan")},
         "test_explained_variance"),
        ("EV returned as a tensor", {"explained_variance": _ev_factory("tensor")}, "test_explained_variance"),
        ("EV variances over padding too", {"explained_variance": _ev_factory("unmasked")}, "test_explained_variance"),
        ("value head reads only the last position", {"ValueHead": _value_head_variant(nb, forward=last_position_only)},
         "test_ValueHead"),
        ("value head squeezes every size-1 dimension", {"ValueHead": _value_head_variant(nb, forward=squeeze_all)},
         "test_ValueHead"),
        ("value head keeps PyTorch's random init", {"ValueHead": _value_head_variant(nb, init=init_keeps_default)},
         "test_ValueHead"),
        ("value head shares the RM's head", {"ValueHead": _value_head_variant(nb, init=init_shares_rm_head)},
         "test_ValueHead"),
        ("value head copies the RM's weight but not its bias",
         {"ValueHead": _value_head_variant(nb, init=init_weight_only)}, "test_ValueHead"),
        ("shared design runs the trunk twice", {"PolicyWithValue": _policy_variant(nb, forward=forward_two_passes)},
         "test_PolicyWithValue_shared"),
        ("shared design detaches the hidden states", {"PolicyWithValue": _policy_variant(nb, forward=forward_detached)},
         "test_PolicyWithValue_shared"),
        ("position_ids ignored", {"PolicyWithValue": _policy_variant(nb, forward=forward_no_positions)},
         "test_PolicyWithValue_shared"),
        ("logits_from ignored", {"PolicyWithValue": _policy_variant(nb, forward=forward_ignores_logits_from)},
         "test_PolicyWithValue_shared"),
        ("values sliced with the logits", {"PolicyWithValue": _policy_variant(nb, forward=forward_slices_values_too)},
         "test_PolicyWithValue_shared"),
        ("separate design ignores logits_from",
         {"PolicyWithValue": _policy_variant(nb, forward=forward_ignores_logits_from)}, "test_PolicyWithValue_separate"),
        ("shared design copies the policy", {"PolicyWithValue": _policy_variant(nb, shared=shared_copies_policy)},
         "test_PolicyWithValue_shared"),
        ("separate design shares the RM's trunk",
         {"PolicyWithValue": _policy_variant(nb, separate=separate_shares_rm_trunk)}, "test_PolicyWithValue_separate"),
        ("separate design copies the policy's trunk",
         {"PolicyWithValue": _policy_variant(nb, separate=separate_from_policy)}, "test_PolicyWithValue_separate"),
        ("separate design with a zero head", {"PolicyWithValue": _policy_variant(nb, separate=separate_zero_head)},
         "test_PolicyWithValue_separate"),
    ]


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # some wrong variants warn; only pass/fail matters here
        survivors = surviving_variants(NOTEBOOK, nb, wrong_variants(nb))
    assert not survivors, f"wrong implementations that still pass: {survivors}"


# A student's notebook whose graded cells compute the right thing but check nothing (torch and Python raise
# their own errors, or none); written as cell sources so that PolicyWithValue uses this ValueHead.
UNCHECKED_CELLS = {
    "ValueHead": """
class ValueHead(nn.Module):
    def __init__(self, n_embd: int, init: str = "zero", reward_model: RewardModel | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(n_embd, 1)
        with torch.no_grad():
            if init == "reward_model":  # reward_model=None: AttributeError
                self.linear.weight.copy_(reward_model.head.weight)
                self.linear.bias.copy_(reward_model.head.bias)
            else:  # any other init silently means zero
                self.linear.weight.zero_()
                self.linear.bias.zero_()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states)[..., 0]
""",
    "monte_carlo_returns": """
def monte_carlo_returns(rewards, mask, gamma):
    with torch.no_grad():
        m = mask.bool()
        r = torch.where(m, rewards, torch.zeros((), dtype=rewards.dtype))
        out, running = torch.zeros_like(r), torch.zeros_like(r[:, 0])
        for t in range(r.shape[1] - 1, -1, -1):
            running = torch.where(m[:, t], r[:, t] + gamma * running, running)
            out[:, t] = torch.where(m[:, t], running, torch.zeros((), dtype=r.dtype))
        return out
""",
    "value_loss": """
def value_loss(values, returns, mask):
    return 0.5 * masked_mean((values - returns.detach()) ** 2, mask)
""",
    "explained_variance": """
def explained_variance(values, returns, mask):
    with torch.no_grad():
        var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        e = returns - values
        var_e = masked_mean((e - masked_mean(e, mask)) ** 2, mask)
        return float("nan") if var_r.item() == 0 else 1.0 - (var_e / var_r).item()
""",
}


def notebook_module_with(cells: dict[str, str]) -> types.ModuleType:
    """The notebook's library with some solution cells replaced by other source, as a student's notebook."""
    from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook, strip_solution_markers

    module = types.ModuleType("notebook_05_variant")
    for cell in read_notebook(NOTEBOOK)["cells"]:
        if cell_kind(cell) in ("solution", "export"):
            grade_id = nbgrader_meta(cell).get("grade_id")
            code = cells.get(grade_id, strip_solution_markers(cell_source(cell)))
            exec(compile(code, f"<{grade_id}>", "exec"), module.__dict__)
    return module


def test_correct_math_without_validation_loses_only_the_validation_cells():
    """Points follow the math: no input checks at all (torch raises its own errors) still earns every other cell."""
    assert set(UNCHECKED_CELLS) == {"ValueHead", "monte_carlo_returns", "value_loss", "explained_variance"}
    module = notebook_module_with(UNCHECKED_CELLS)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        failed = failing(run_test_cells(NOTEBOOK, module=module))
    assert all(cell.endswith("_errors") for cell in failed), {k: v for k, v in failed.items() if not k.endswith("_errors")}
    assert set(failed) == {cell for cell in graded_cells(NOTEBOOK) if cell.endswith("_errors")}, failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []
