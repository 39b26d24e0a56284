"""Notebook 08 (the PPO loop): reference code against independent oracles, end to end, and the test cells' bar.

Oracles: an empirical sampling distribution (the rollout's log-probs describe the distribution it sampled
from), a PPO step written independently with torch's own clipping and cross-entropy, and row-by-row
unpadded forward passes. End to end: a few iterations of the tiny configuration raise the learned reward
with a finite KL, and two seeded runs give bit-identical logs. The test cells are checked from both sides:
the reference passes all of them, plausible wrong implementations each fail a cell that grades their math,
and a correct implementation without the input checks loses only the validation cells.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cells import failing, run_silently, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "08_ppo_loop" / "08_ppo_loop.ipynb"
GRADED = ("rollout", "score_responses", "reference_logprobs", "minibatch_indices", "ppo_update", "train_ppo")


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def tiny_gpt2(seed: int = 0, V: int = 12, peaked: bool = True):
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    torch.manual_seed(seed)
    gpt = GPT2(GPT2Config(vocab_size=V, n_positions=48, n_embd=16, n_layer=1, n_head=2))
    if peaked:
        with torch.no_grad():
            gpt.wte.weight.normal_(0.0, 1.0)
            for name, p in gpt.named_parameters():
                if ".mlp." in name and name.endswith("weight"):
                    p.normal_(0.0, 0.5)
    return gpt.eval()


def left_padded(prompts, pad):
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the reference code


def test_exported_module_has_the_contract():
    import minirlhf.ppo_loop as ppo

    for name in GRADED + ("PPOConfig", "TINY_PPO_CONFIG", "check_config", "save_checkpoint"):
        assert hasattr(ppo, name), name
    cfg = ppo.PPOConfig()
    assert (cfg.gamma, cfg.lam, cfg.clip_eps, cfg.clip_range_value, cfg.vf_coef, cfg.kl_target, cfg.kl_horizon) == (
        1.0, 0.95, 0.2, 0.2, 0.1, 6.0, 10000.0)
    assert cfg.adaptive_kl and not cfg.whiten_rewards


def test_every_config_field_has_a_docstring():
    """CleanRL style: a docstring under each field of PPOConfig (read from the notebook's source)."""
    import ast
    import inspect

    import minirlhf.ppo_loop as ppo

    tree = ast.parse(inspect.getsource(ppo.PPOConfig))
    body = tree.body[0].body
    fields = [n.target.id for n in body if isinstance(n, ast.AnnAssign)]
    documented = {body[i].target.id for i in range(len(body) - 1)
                  if isinstance(body[i], ast.AnnAssign) and isinstance(body[i + 1], ast.Expr)
                  and isinstance(body[i + 1].value, ast.Constant) and isinstance(body[i + 1].value.value, str)}
    assert set(fields) == {f.name for f in dataclasses.fields(ppo.PPOConfig)}
    assert set(fields) == documented, sorted(set(fields) - documented)


def test_rollout_logprobs_describe_the_distribution_it_samples(nb):
    """Oracle: the empirical distribution of the first response token over 4,000 samples."""
    from minirlhf.value_head import PolicyWithValue

    model = PolicyWithValue.shared(tiny_gpt2(3, V=8, peaked=False))
    with torch.no_grad():
        model.policy.wte.weight.normal_(0.0, 0.4)
    n, tau = 4000, 0.6
    ids, mask = left_padded([[1, 2, 3]] * n, 0)
    out = nb.rollout(model, ids, mask, nb.PPOConfig(max_new_tokens=1, temperature=tau, eos_id=7),
                     torch.Generator().manual_seed(0))
    first = out["response_ids"][:, 0]
    empirical = torch.bincount(first, minlength=8).double() / n
    probs = torch.zeros(8, dtype=torch.float64)
    for t in range(8):
        rows = (first == t).nonzero()
        if len(rows):
            probs[t] = out["old_logprobs"][rows[0, 0], 0].double().exp()
    seen = empirical > 0
    assert torch.allclose(empirical[seen], probs[seen], atol=0.03), (empirical, probs)
    assert empirical[probs > 0.05].sum() > 0.9


def test_rollout_is_independent_of_padding_and_batching(nb):
    from minirlhf.value_head import PolicyWithValue

    model = PolicyWithValue.shared(tiny_gpt2(4))
    prompts = [[1, 2, 3, 4], [5], [6, 7]]
    cfg = nb.PPOConfig(max_new_tokens=6, temperature=0.8, eos_id=11)
    batch = nb.rollout(model, *left_padded(prompts, 11), cfg, torch.Generator().manual_seed(1))
    P = batch["input_ids"].shape[1] - batch["response_ids"].shape[1]
    for b, p in enumerate(prompts):
        n = int(batch["response_mask"][b].sum())
        text = torch.tensor([p + batch["response_ids"][b, :n].tolist()])
        with torch.no_grad():
            logits, values = model(text, torch.ones_like(text))
        lp = torch.log_softmax(logits[0, len(p) - 1:-1] / 0.8, -1).gather(-1, text[0, len(p):, None])[:, 0]
        assert torch.allclose(batch["old_logprobs"][b, :n], lp, atol=1e-5)
        assert torch.allclose(batch["values"][b, :n], values[0, len(p) - 1:-1], atol=1e-5)
        assert (batch["old_logprobs"][b, n:] == 0).all() and (batch["values"][b, n:] == 0).all()
        assert batch["attention_mask"][b, :P].sum() == len(p)


def _independent_ppo_step(model, optimizer, batch, cfg, idx):
    """One minibatch step written without minirlhf: F.cross_entropy log-probs, torch's norm clipping."""
    R = batch["response_ids"].shape[1]
    P = batch["input_ids"].shape[1] - R
    b = {k: v[idx] for k, v in batch.items()}
    m = b["response_mask"].bool()
    logits, values = model(b["input_ids"], b["attention_mask"], b["position_ids"])
    z = logits[:, P - 1:-1] / cfg.temperature
    lp = -F.cross_entropy(z.reshape(-1, z.shape[-1]), b["response_ids"].reshape(-1), reduction="none").view(z.shape[:2])
    ratio = (lp - b["old_logprobs"]).exp()
    pg = torch.max(-b["advantages"] * ratio, -b["advantages"] * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps))[m].mean()
    v = values[:, P - 1:-1]
    v_clip = b["values"] + (v - b["values"]).clamp(-cfg.clip_range_value, cfg.clip_range_value)
    vf = 0.5 * torch.max((v - b["returns"]) ** 2, (v_clip - b["returns"]) ** 2)[m].mean()
    optimizer.zero_grad()
    (pg + cfg.vf_coef * vf).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()


def _synthetic_batch(model, seed, B=6, P=3, R=4, tau=0.9):
    g = torch.Generator().manual_seed(seed)
    V = model.policy.config.vocab_size
    ids = torch.randint(0, V, (B, P + R), generator=g)
    am = torch.ones(B, P + R, dtype=torch.long)
    rmask = torch.ones(B, R, dtype=torch.long)
    for b in range(B):
        am[b, : b % P] = 0
        n = 1 + b % R
        rmask[b, n:] = 0
        am[b, P + n:] = 0
    pos = (am.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits, values = model(ids, am, pos)
    lp = torch.log_softmax(logits[:, P - 1:-1] / tau, -1).gather(-1, ids[:, P:, None])[..., 0]
    m = rmask.bool()
    z = lambda: torch.randn(B, R, generator=g)
    return {"input_ids": ids, "attention_mask": am, "position_ids": pos, "response_ids": ids[:, P:].clone(),
            "response_mask": rmask, "old_logprobs": torch.where(m, lp + 0.1 * z(), 0.0),
            "values": torch.where(m, values[:, P - 1:-1] + 0.1 * z(), 0.0), "advantages": torch.where(m, z(), 0.0),
            "returns": torch.where(m, z(), 0.0)}


def test_ppo_update_matches_an_independent_step_with_adam(nb):
    from minirlhf.value_head import PolicyWithValue

    model = PolicyWithValue.shared(tiny_gpt2(5))
    batch = _synthetic_batch(model, 5)
    cfg = nb.PPOConfig(ppo_epochs=2, minibatch_size=3, temperature=0.9, max_grad_norm=0.3, lr=1e-2)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5)
    g = torch.Generator().manual_seed(7)
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(6, generator=g).split(3):
            _independent_ppo_step(ref, ref_opt, batch, cfg, idx)
    stats = nb.ppo_update(model, torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-5), batch, cfg,
                          torch.Generator().manual_seed(7))
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert stats["epochs"] == 2.0 and stats["grad_norm"] > 0.3


def test_ppo_update_runs_on_the_gpt2_small_architecture(nb):
    """The benchmark's contract: any PolicyWithValue, here GPT-2 small's shape (narrowed to stay fast)."""
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config
    from minirlhf.value_head import PolicyWithValue

    torch.manual_seed(0)
    model = PolicyWithValue.shared(GPT2(GPT2Config(n_layer=2, n_embd=64, n_head=4)))  # vocab 50257, 1024 positions
    batch = _synthetic_batch(model, 1, B=4, P=5, R=6, tau=1.0)
    stats = nb.ppo_update(model, torch.optim.Adam(model.parameters(), lr=1e-4), batch,
                          nb.PPOConfig(ppo_epochs=1, minibatch_size=2))
    assert all(math.isfinite(v) for v in stats.values()), stats


def test_score_responses_replaces_the_score_of_cut_responses(nb):
    class Constant(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return torch.full((input_ids.shape[0],), 3.0)

    batch = {"input_ids": torch.zeros(3, 5, dtype=torch.long), "attention_mask": torch.ones(3, 5, dtype=torch.long),
             "response_ids": torch.tensor([[1, 9], [9, 9], [1, 1]]),
             "response_mask": torch.tensor([[1, 1], [1, 0], [1, 1]])}
    out = nb.score_responses(Constant(), batch, (0.5, 1.0), eos_penalty=-4.0, eos_id=9)
    assert out.tolist() == [2.5, 2.5, -4.0]


def test_minibatch_indices_partition_the_batch(nb):
    g = torch.Generator().manual_seed(0)
    for B, M in ((64, 16), (12, 4), (3, 3)):
        parts = nb.minibatch_indices(B, M, g)
        assert [len(p) for p in parts] == [M] * (B // M)
        assert sorted(torch.cat(parts).tolist()) == list(range(B))


@pytest.mark.parametrize("bad", [dict(minibatch_size=3), dict(init_kl_coef=-0.5), dict(max_new_tokens=0),
                                 dict(temperature=0.0), dict(temperature=-0.7), dict(ppo_epochs=0), dict(lr=0.0),
                                 dict(gamma=1.5), dict(batch_size=64)])
def test_bad_configs_raise_before_any_work(nb, bad):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"touched .{name}")

    cfg = nb.PPOConfig(**{"batch_size": 8, "minibatch_size": 4, **bad})
    with pytest.raises(ValueError):
        nb.train_ppo(cfg, Untouchable(), Untouchable(), Untouchable(), [[1]] * 10, (1.0, 0.0))


# ----------------------------------------------------------------------------- end to end (tiny configuration)


@pytest.fixture(scope="module")
def tiny_models():
    from helpers import ppo_pipeline

    return ppo_pipeline.load_models(tiny=True)


def _tiny_run(nb, models, **changes):
    from helpers.world import World
    from minirlhf.value_head import PolicyWithValue

    world = World(0)
    prompts = [models.vocab.encode_prompt(p) for p in world.prompts("train")[:64]]
    cfg = nb.PPOConfig(eos_id=models.vocab.eos_id, iterations=10, batch_size=16, minibatch_size=8, ppo_epochs=2,
                       max_new_tokens=12, lr=3e-3, init_kl_coef=0.05, seed=3)
    cfg = dataclasses.replace(cfg, **changes)
    model = PolicyWithValue.shared(copy.deepcopy(models.policy))
    history = nb.train_ppo(cfg, model, models.reference, models.reward_model, prompts, models.norm)
    return model, history


def test_tiny_end_to_end_raises_the_learned_reward(nb, tiny_models):
    import time

    start = time.perf_counter()
    _, history = _tiny_run(nb, tiny_models)
    seconds = time.perf_counter() - start
    scores = [h["score"] for h in history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.1, scores
    assert all(math.isfinite(h["kl"]) and math.isfinite(h["loss"]) for h in history), history
    assert seconds < 60, seconds


def test_two_seeded_runs_give_bit_identical_logs(nb, tiny_models):
    runs = [_tiny_run(nb, tiny_models, iterations=3) for _ in range(2)]
    logs = [[{k: v for k, v in h.items() if k != "seconds"} for h in history] for _, history in runs]
    assert logs[0] == logs[1]
    for (name, p), q in zip(runs[0][0].named_parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q), name
    other = _tiny_run(nb, tiny_models, iterations=3, seed=4)[1]
    assert [h["score"] for h in other] != [h["score"] for h in logs[0]]


def test_restricted_vocabulary_is_the_renormalised_full_model(tiny_models):
    """helpers.ppo_pipeline: the world-vocabulary GPT-2 equals the full one restricted and renormalised."""
    from helpers.ppo_pipeline import restrict_vocabulary, world_vocabulary
    from helpers.sft_pipeline import load_sft_model

    full = load_sft_model(tiny=True)
    vocab = world_vocabulary()
    small = restrict_vocabulary(full, vocab)
    text = torch.tensor([vocab.encode_prompt("tell me about the cat.")])
    with torch.no_grad():
        z_small = small(text)
        z_full = full(torch.tensor([vocab.to_gpt2(text[0].tolist())]))[..., vocab.gpt2_ids]
    assert torch.allclose(torch.log_softmax(z_small, -1), torch.log_softmax(z_full, -1), atol=1e-5)
    assert vocab.decode_response(text[0].tolist() + [vocab.eos_id, 3]).startswith("Instruction: tell me")


# ----------------------------------------------------------------------------- the test cells' bar


def test_reference_passes_every_test_cell_silently(nb):
    results, stderr, warned = run_silently(NOTEBOOK, nb)
    assert failing(results) == {}
    assert stderr == "" and not warned, (stderr, warned)


def _variants(nb):
    """(description, {name: wrong definition}, the cell that must fail)."""
    from minirlhf.gae import compute_gae, kl_estimate, masked_whiten, per_token_rewards
    from minirlhf.ppo_loss import AdaptiveKLController, FixedKLController, ppo_loss
    from minirlhf.sft import clip_grad_norm_, pad_batch, position_ids_from_mask
    from minirlhf.tokenizer_gpt2 import generate, logprobs_from_logits
    from minirlhf.value_head import explained_variance

    def rollout_factory(mask_rule="generate", temperature=True, value_shift=0):
        def rollout(model, prompt_ids, prompt_mask, cfg, generator=None):
            P = prompt_ids.shape[1]
            with torch.no_grad():
                ids, rmask = generate(model.policy, prompt_ids, prompt_mask, cfg.max_new_tokens, eos_id=cfg.eos_id,
                                      temperature=cfg.temperature, generator=generator)
                resp = ids[:, P:]
                if mask_rule == "before_eos":  # stops before the EOS: the EOS itself is not a response token
                    rmask = rmask * (resp != cfg.eos_id).to(rmask.dtype)
                elif mask_rule == "all":  # never stops
                    rmask = torch.ones_like(rmask)
                am = torch.cat([prompt_mask, rmask], 1)
                pos = position_ids_from_mask(am)
                logits, values = model(ids, am, pos)
                z = logits[:, P - 1:-1] / (cfg.temperature if temperature else 1.0)
                lp = logprobs_from_logits(z, resp)
                v = values[:, P - 1 + value_shift: values.shape[1] - 1 + value_shift] if value_shift else values[:, P - 1:-1]
                m = rmask.bool()
            return {"input_ids": ids, "attention_mask": am, "position_ids": pos, "response_ids": resp,
                    "response_mask": rmask, "old_logprobs": torch.where(m, lp, 0.0), "values": torch.where(m, v, 0.0)}
        return rollout

    def score_factory(rule):
        def score_responses(reward_model, batch, norm, eos_penalty, eos_id=50256):
            with torch.no_grad():
                if rule == "ignore_mask":
                    raw = reward_model(batch["input_ids"], torch.ones_like(batch["attention_mask"]))
                else:
                    raw = reward_model(batch["input_ids"], batch["attention_mask"])
                ended = ((batch["response_ids"] == eos_id) & batch["response_mask"].bool()).any(1)
                s = raw if rule == "no_norm" else norm[0] * raw + norm[1]
                if rule == "add_penalty":
                    return torch.where(ended, s, s + eos_penalty)
                return torch.where(ended, s, torch.full_like(s, eos_penalty))
        return score_responses

    def ref_no_temperature(ref_model, batch, temperature):
        R = batch["response_ids"].shape[1]
        P = batch["input_ids"].shape[1] - R
        with torch.no_grad():
            z = ref_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, P - 1:-1]
            return torch.where(batch["response_mask"].bool(), logprobs_from_logits(z, batch["response_ids"]), 0.0)

    def ref_misaligned(ref_model, batch, temperature):
        R = batch["response_ids"].shape[1]
        P = batch["input_ids"].shape[1] - R
        with torch.no_grad():
            z = ref_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, P:] / temperature
            return torch.where(batch["response_mask"].bool(), logprobs_from_logits(z, batch["response_ids"]), 0.0)

    def minibatch_fixed_seed(batch_size, minibatch_size, generator=None):
        return list(torch.randperm(batch_size, generator=torch.Generator().manual_seed(0)).split(minibatch_size))

    def minibatch_in_order(batch_size, minibatch_size, generator=None):
        return list(torch.arange(batch_size).split(minibatch_size))

    def update_factory(temperature=True, early_stop=True, fresh_perm=True, clip=True, zero_grad=True):
        def ppo_update(model, optimizer, batch, cfg, generator=None):
            B, R = batch["response_ids"].shape
            P = batch["input_ids"].shape[1] - R
            sums, steps, epochs, perm = {}, 0, 0, None
            for _ in range(cfg.ppo_epochs):
                if fresh_perm or perm is None:
                    perm = nb.minibatch_indices(B, cfg.minibatch_size, generator)
                parts = perm
                for idx in parts:
                    logits, values = model(batch["input_ids"][idx], batch["attention_mask"][idx],
                                           batch["position_ids"][idx])
                    z = logits[:, P - 1:-1] / (cfg.temperature if temperature else 1.0)
                    lp = logprobs_from_logits(z, batch["response_ids"][idx])
                    loss, stats = ppo_loss(lp, batch["old_logprobs"][idx], batch["advantages"][idx],
                                           values[:, P - 1:-1], batch["values"][idx], batch["returns"][idx],
                                           batch["response_mask"][idx], z, clip_eps=cfg.clip_eps,
                                           clip_range_value=cfg.clip_range_value, vf_coef=cfg.vf_coef,
                                           ent_coef=cfg.ent_coef)
                    if zero_grad:
                        optimizer.zero_grad()
                    loss.backward()
                    norm = clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if clip else math.sqrt(
                        sum(float(p.grad.square().sum()) for p in model.parameters() if p.grad is not None))
                    optimizer.step()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
                    steps += 1
                epochs += 1
                if early_stop and cfg.target_kl is not None and float(stats["approx_kl"]) > cfg.target_kl:
                    break
            out = {k: sums[k] / steps for k in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl",
                                                 "clip_frac", "grad_norm")}
            out["epochs"] = float(epochs)
            return out
        return ppo_update

    def train_factory(whiten_adv=True, reward_shift=False, token_mean_kl=False, update_beta_first=False):
        def train_ppo(cfg, model, ref_model, reward_model, prompts, norm, *, gold_fn=None, checkpoint=None,
                      progress=None):
            nb.check_config(cfg, len(prompts))
            gen = torch.Generator().manual_seed(cfg.seed)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
            ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                   else FixedKLController(cfg.init_kl_coef))
            history = []
            for it in range(cfg.iterations):
                idx = torch.randperm(len(prompts), generator=gen)[: cfg.batch_size].tolist()
                ids, pm = pad_batch([torch.tensor(list(prompts[i])) for i in idx], cfg.eos_id, side="left")
                batch = nb.rollout(model, ids, pm, cfg, gen)
                m = batch["response_mask"]
                scores = nb.score_responses(reward_model, batch, norm, cfg.eos_penalty, cfg.eos_id)
                ref = nb.reference_logprobs(ref_model, batch, cfg.temperature)
                per_seq = (kl_estimate(batch["old_logprobs"], ref, "k1") * m).sum(1)
                kl = (per_seq / m.sum(1) if token_mean_kl else per_seq).mean().item()
                beta = ctl.value
                if update_beta_first:
                    ctl.update(kl, cfg.batch_size)
                rewards = per_token_rewards(scores, batch["old_logprobs"], ref, m, ctl.value)
                if cfg.whiten_rewards:
                    rewards = masked_whiten(rewards, m, shift_mean=reward_shift)
                adv, ret = compute_gae(rewards, batch["values"], m, cfg.gamma, cfg.lam)
                if whiten_adv:
                    adv = masked_whiten(adv, m)
                stats = nb.ppo_update(model, opt, {**batch, "advantages": adv, "returns": ret}, cfg, gen)
                log = {"iteration": it, "score": scores.mean().item(), "kl": kl, "kl_coef": beta,
                       "reward": scores.mean().item() - beta * kl, "response_length": m.sum(1).float().mean().item(),
                       "explained_variance": explained_variance(batch["values"], ret, m), **stats}
                if gold_fn is not None:
                    log["gold"] = gold_fn(idx, batch)
                if not update_beta_first:
                    ctl.update(kl, cfg.batch_size)
                log["seconds"] = 0.0
                history.append(log)
            if checkpoint is not None:
                nb.save_checkpoint(checkpoint, model, cfg, history)
            return history
        return train_ppo

    return [
        ("response mask stops before the EOS", {"rollout": rollout_factory("before_eos")}, "test_rollout"),
        ("response mask never stops", {"rollout": rollout_factory("all")}, "test_rollout"),
        ("rollout log-probs without temperature", {"rollout": rollout_factory(temperature=False)}, "test_rollout"),
        ("rollout values read one column late", {"rollout": rollout_factory(value_shift=1)}, "test_rollout"),
        ("penalty added to the score", {"score_responses": score_factory("add_penalty")}, "test_score_responses"),
        ("score not normalised", {"score_responses": score_factory("no_norm")}, "test_score_responses"),
        ("reward model read without the attention mask", {"score_responses": score_factory("ignore_mask")},
         "test_score_responses"),
        ("reference log-probs without temperature", {"reference_logprobs": ref_no_temperature},
         "test_reference_logprobs"),
        ("reference logits read at the token itself", {"reference_logprobs": ref_misaligned},
         "test_reference_logprobs"),
        ("the same permutation every call", {"minibatch_indices": minibatch_fixed_seed}, "test_minibatch_indices"),
        ("no shuffling", {"minibatch_indices": minibatch_in_order}, "test_minibatch_indices"),
        ("update log-probs without temperature", {"ppo_update": update_factory(temperature=False)}, "test_ppo_update"),
        ("no early stop at target_kl", {"ppo_update": update_factory(early_stop=False)}, "test_ppo_update"),
        ("the same permutation every epoch", {"ppo_update": update_factory(fresh_perm=False)}, "test_ppo_update"),
        ("gradients not clipped", {"ppo_update": update_factory(clip=False)}, "test_ppo_update"),
        ("gradients never zeroed", {"ppo_update": update_factory(zero_grad=False)}, "test_ppo_update"),
        ("advantages not whitened", {"train_ppo": train_factory(whiten_adv=False)}, "test_train_ppo"),
        ("rewards whitened with the mean shifted", {"train_ppo": train_factory(reward_shift=True)}, "test_train_ppo"),
        ("controller fed the per-token KL", {"train_ppo": train_factory(token_mean_kl=True)}, "test_train_ppo"),
        ("beta updated before the rewards", {"train_ppo": train_factory(update_beta_first=True)}, "test_train_ppo"),
    ]


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    survivors = surviving_variants(NOTEBOOK, nb, _variants(nb))
    assert not survivors, f"wrong implementations that still pass: {survivors}"


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every non-validation cell."""
    src = {k: v for k, v in vars(nb).items()}

    def minibatch_indices(batch_size, minibatch_size, generator=None):
        return list(torch.randperm(batch_size, generator=generator).split(minibatch_size))

    reference_train = src["train_ppo"]

    def train_ppo(cfg, model, ref_model, reward_model, prompts, norm, **kwargs):
        with _no_check_config(reference_train):
            return reference_train(cfg, model, ref_model, reward_model, prompts, norm, **kwargs)

    failed = failing(run_test_cells(NOTEBOOK, {"minibatch_indices": minibatch_indices, "train_ppo": train_ppo},
                                    module=nb))
    assert failed, "the validation cells must notice the missing checks"
    assert all(cell.endswith("_errors") for cell in failed), failed


@contextlib.contextmanager
def _no_check_config(fn):
    """Run the reference train_ppo with its module's check_config disabled."""
    glb = fn.__globals__
    saved = glb["check_config"]
    glb["check_config"] = lambda cfg, n_prompts=None: None
    try:
        yield
    finally:
        glb["check_config"] = saved


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []
