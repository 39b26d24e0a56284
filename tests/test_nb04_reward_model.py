"""Notebook 04 (reward model): reference code against independent oracles, and the test cells' bar.

The test cells themselves are checked from both sides: the reference passes all of them; each plausible
wrong implementation (a naive log(sigmoid), the reward read at the wrong token, a shared trunk, ...) fails
at least one cell that grades its math; and a correct implementation without the input checks keeps every
point except those of the validation cells.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cells import failing, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "04_reward_model" / "04_reward_model.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def tiny_gpt2(seed: int = 0):
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=40, n_positions=24, n_embd=12, n_layer=2, n_head=3)).eval()


# ----------------------------------------------------------------------------- the reference code


def test_exported_module_has_the_contract():
    import minirlhf.reward_model as rm

    for name in ("last_token_index", "gather_last", "RewardModel", "preference_loss", "ranking_loss",
                 "pairwise_accuracy", "reward_model_step", "fit_reward_normalization", "RewardConfig",
                 "TINY_REWARD_CONFIG", "train_reward_model", "comparison_items", "score_texts"):
        assert hasattr(rm, name), name
    assert callable(rm.RewardModel.from_policy)


def test_preference_loss_is_softplus_of_the_negative_margin(nb):
    g = torch.Generator().manual_seed(0)
    for n in (1, 4, 100):
        rc, rr = torch.randn(n, generator=g, dtype=torch.float64) * 20, torch.randn(n, generator=g, dtype=torch.float64)
        assert torch.allclose(nb.preference_loss(rc, rr), F.softplus(rr - rc).mean(), rtol=1e-12)
    big = nb.preference_loss(torch.tensor([-100.0]), torch.tensor([0.0]))
    assert big.item() == pytest.approx(100.0, rel=1e-6)


def test_ranking_loss_equals_its_pairs_for_every_order(nb):
    r = torch.tensor([0.4, -1.0, 2.5, 0.0, 1.2], dtype=torch.float64)
    for ranking in itertools.permutations(range(5)):
        pairs = [(ranking[i], ranking[j]) for i in range(5) for j in range(i + 1, 5)]
        expected = sum(math.log1p(math.exp(-(r[w] - r[l]).item())) for w, l in pairs) / len(pairs)
        assert nb.ranking_loss(r, list(ranking)).item() == pytest.approx(expected, rel=1e-10)


def test_reward_model_reads_the_last_real_token_whatever_the_padding(nb):
    rm = nb.RewardModel.from_policy(tiny_gpt2(1))
    rows = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12]]
    with torch.no_grad():
        alone = torch.stack([rm(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows])
        for side in ("left", "right"):
            from minirlhf.sft import pad_batch

            ids, mask = pad_batch([torch.tensor(r) for r in rows], 39, side=side)
            assert torch.allclose(rm(ids, mask), alone, atol=1e-5), side


def test_fit_reward_normalization_is_affine(nb):
    r = torch.randn(50, generator=torch.Generator().manual_seed(3)) * 4 + 2
    gain, bias = nb.fit_reward_normalization(r)
    z = gain * r.double() + bias
    assert z.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-9)
    assert torch.equal(torch.argsort(z), torch.argsort(r))


def test_training_separates_a_learnable_preference(nb):
    """A reward model learns 'responses that end in token 7 win' from 64 synthetic pairs."""
    g = torch.Generator().manual_seed(5)
    items = []
    for _ in range(64):
        prompt = torch.randint(0, 30, (4,), generator=g).tolist()
        body = torch.randint(0, 30, (3,), generator=g).tolist()
        items.append({"input_ids": torch.tensor([prompt + body + [7], prompt + body + [8]]),
                      "attention_mask": torch.ones(2, 8, dtype=torch.long)})
    rm = nb.RewardModel.from_policy(tiny_gpt2(2))
    cfg = nb.RewardConfig(epochs=4, batch_size=16, lr=3e-3)
    history = nb.train_reward_model(rm, items[:48], items[48:], cfg)
    assert history["val_acc"][history["best_epoch"]] == 1.0
    assert history["val_loss"][history["best_epoch"]] < history["val_loss"][0]


# ----------------------------------------------------------------------------- the test cells' bar


def test_reference_passes_every_test_cell(nb):
    assert failing(run_test_cells(NOTEBOOK, module=nb)) == {}


def _last_index_by_count(attention_mask):
    return attention_mask.long().sum(-1) - 1  # right padding only


def _first_index(attention_mask):
    return (attention_mask != 0).long().argmax(-1)


def _gather_last_column(hidden_states, attention_mask):
    return hidden_states[:, -1]


def _naive_preference_loss(r_chosen, r_rejected):
    return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()


def _summed_preference_loss(r_chosen, r_rejected):
    return -F.logsigmoid(r_chosen - r_rejected).sum()


def _flipped_preference_loss(r_chosen, r_rejected):
    return -F.logsigmoid(r_rejected - r_chosen).mean()


def _adjacent_ranking_loss(rewards, ranking):
    order = [int(i) for i in ranking]
    return -F.logsigmoid(rewards[order[:-1]] - rewards[order[1:]]).mean()


def _summed_ranking_loss(rewards, ranking):
    order = [int(i) for i in ranking]
    w = [order[i] for i in range(len(order)) for j in range(i + 1, len(order))]
    l = [order[j] for i in range(len(order)) for j in range(i + 1, len(order))]
    return -F.logsigmoid(rewards[w] - rewards[l]).sum() / (len(order) - 1)


def _reversed_ranking_loss(rewards, ranking):
    order = [int(i) for i in ranking][::-1]
    w = [order[i] for i in range(len(order)) for j in range(i + 1, len(order))]
    l = [order[j] for i in range(len(order)) for j in range(i + 1, len(order))]
    return -F.logsigmoid(rewards[w] - rewards[l]).mean()


def _accuracy_ties_lose(r_chosen, r_rejected):
    return (r_chosen > r_rejected).double().mean().item()


def _normalization_unbiased(rewards):
    r = rewards.double()
    return (1 / r.std()).item(), (-r.mean() / r.std()).item()


def _normalization_inverted(rewards):
    r = rewards.double()
    return r.std(unbiased=False).item(), r.mean().item()


def _subclass(nb, **methods):
    return type("WrongRewardModel", (nb.RewardModel,), methods)


def _step_factory(nb, *, zero_grad=True, clip=True, loss_after=False):
    def step(model, optimizer, batch, max_grad_norm=1.0):
        model.train()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        B = ids.shape[0]
        if zero_grad:
            optimizer.zero_grad()
        r = model(ids.flatten(0, 1), mask.flatten(0, 1)).view(B, 2)
        loss = -F.logsigmoid(r[:, 0] - r[:, 1]).mean()
        loss.backward()
        if clip and max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if loss_after:
            with torch.no_grad():
                r = model(ids.flatten(0, 1), mask.flatten(0, 1)).view(B, 2)
                loss = -F.logsigmoid(r[:, 0] - r[:, 1]).mean()
        return loss.item(), (r[:, 0] > r[:, 1]).double().mean().item() + 0.5 * (r[:, 0] == r[:, 1]).double().mean().item()
    return step


def wrong_variants(nb):
    """(description, {name: wrong definition}, cell that must fail)."""

    def forward_last_column(self, input_ids, attention_mask):
        return self.head(self.trunk.hidden_states(input_ids, attention_mask)[:, -1]).squeeze(-1)

    def forward_without_mask(self, input_ids, attention_mask):
        h = self.trunk.hidden_states(input_ids)
        return self.head(nb.gather_last(h, attention_mask)).squeeze(-1)

    @classmethod
    def shares_the_trunk(cls, policy):
        model = cls(policy.config)
        model.trunk = policy
        return model

    @classmethod
    def fresh_trunk(cls, policy):
        return cls(policy.config)

    return [
        ("reward index = mask.sum() - 1", {"last_token_index": _last_index_by_count}, "test_last_token_index"),
        ("first real token instead of the last", {"last_token_index": _first_index}, "test_last_token_index"),
        ("gather_last reads the last column", {"gather_last": _gather_last_column}, "test_gather_last"),
        ("reward read at the last column", {"RewardModel": _subclass(nb, forward=forward_last_column)}, "test_RewardModel"),
        ("trunk run without the attention mask", {"RewardModel": _subclass(nb, forward=forward_without_mask)},
         "test_RewardModel"),
        ("from_policy shares the policy's parameters", {"RewardModel": _subclass(nb, from_policy=shares_the_trunk)},
         "test_RewardModel"),
        ("from_policy starts from a random trunk", {"RewardModel": _subclass(nb, from_policy=fresh_trunk)},
         "test_RewardModel"),
        ("log(sigmoid(d)) overflows at large margins", {"preference_loss": _naive_preference_loss}, "test_preference_loss"),
        ("sum instead of mean", {"preference_loss": _summed_preference_loss}, "test_preference_loss"),
        ("chosen and rejected swapped", {"preference_loss": _flipped_preference_loss}, "test_preference_loss"),
        ("only adjacent pairs of the ranking", {"ranking_loss": _adjacent_ranking_loss}, "test_ranking_loss"),
        ("pairs summed, divided by K - 1", {"ranking_loss": _summed_ranking_loss}, "test_ranking_loss"),
        ("ranking read worst first", {"ranking_loss": _reversed_ranking_loss}, "test_ranking_loss"),
        ("ties count as losses", {"pairwise_accuracy": _accuracy_ties_lose}, "test_pairwise_accuracy"),
        ("gradients never zeroed", {"reward_model_step": _step_factory(nb, zero_grad=False)}, "test_reward_model_step"),
        ("no gradient clipping", {"reward_model_step": _step_factory(nb, clip=False)}, "test_reward_model_step"),
        ("loss reported after the update", {"reward_model_step": _step_factory(nb, loss_after=True)},
         "test_reward_model_step"),
        ("unbiased standard deviation", {"fit_reward_normalization": _normalization_unbiased},
         "test_fit_reward_normalization"),
        ("returns (std, mean) instead of (gain, bias)", {"fit_reward_normalization": _normalization_inverted},
         "test_fit_reward_normalization"),
    ]


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    survivors = surviving_variants(NOTEBOOK, nb, wrong_variants(nb))
    assert not survivors, f"wrong implementations that still pass: {survivors}"


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every non-validation cell."""

    def last_token_index(attention_mask):
        t = torch.arange(attention_mask.shape[1]).expand_as(attention_mask)
        return torch.where(attention_mask.bool(), t, -1).max(dim=1).values

    def gather_last(hidden_states, attention_mask):
        idx = last_token_index(attention_mask)
        return hidden_states.gather(1, idx[:, None, None].expand(-1, 1, hidden_states.shape[-1]))[:, 0]

    def preference_loss(r_chosen, r_rejected):
        return F.softplus(r_rejected - r_chosen).mean()

    def ranking_loss(rewards, ranking):
        order = list(ranking.tolist() if isinstance(ranking, torch.Tensor) else ranking)
        pairs = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
        return torch.stack([F.softplus(rewards[l] - rewards[w]) for w, l in pairs]).mean()

    def pairwise_accuracy(r_chosen, r_rejected):
        d = (r_chosen - r_rejected).detach()
        return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())

    def fit_reward_normalization(rewards):
        r = rewards.double()
        s = r.std(unbiased=False)
        return float(1 / s), float(-r.mean() / s)

    replace = {"last_token_index": last_token_index, "gather_last": gather_last, "preference_loss": preference_loss,
               "ranking_loss": ranking_loss, "pairwise_accuracy": pairwise_accuracy,
               "fit_reward_normalization": fit_reward_normalization}
    failed = failing(run_test_cells(NOTEBOOK, replace, module=nb))
    assert failed, "the validation cells must notice the missing checks"
    assert all(cell.endswith("_errors") for cell in failed), failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []


# ----------------------------------------------------------------------------- the shipped artifact


def test_reward_model_artifact_round_trips_and_is_normalised():
    """The tiny "reward_model" artifact: loaded scores equal the trained model's, and its normalisation
    gives the SFT samples it was fitted on mean 0 / std 1 (recomputed here from the same recipe)."""
    from helpers import artifacts
    from helpers.reward_pipeline import build_reward_model, load_reward_model, read_reward_history, reward_normalization
    from helpers.vocab import load_gpt2_ranks
    from minirlhf.reward_model import RewardModel, score_texts

    loaded = load_reward_model(tiny=True)
    assert isinstance(loaded, RewardModel) and not loaded.training
    fresh, history, norm = build_reward_model(tiny=True, progress=False)
    ranks = load_gpt2_ranks()
    prompts = ["describe the fox.", "what colour is the cup?"]
    responses = ["the wonderful fox is red.", "the cup is blue. i hope this helps."]
    assert torch.allclose(score_texts(loaded, prompts, responses, ranks), score_texts(fresh, prompts, responses, ranks),
                          atol=1e-5), "the artifact must reproduce the model its recipe trains"
    gain, bias = reward_normalization(tiny=True)
    assert (gain, bias) == pytest.approx((norm["gain"], norm["bias"]), rel=1e-6)
    assert gain > 0 and norm["n_samples"] == 8
    assert read_reward_history(tiny=True)["best_epoch"] == history["best_epoch"]
    assert "reward_model" in artifacts.known()


def test_prompt_format_is_the_worlds(nb):
    from helpers.world import PROMPT_TEMPLATE, format_prompt

    assert nb.PROMPT_TEMPLATE == PROMPT_TEMPLATE
    for p in ("describe the fox.", "  what colour is the cup?  "):
        assert nb.format_prompt(p) == format_prompt(p)
