"""Notebook 02 (supervised fine-tuning): the reference code against independent oracles.

Oracles: ``torch.nn.functional.cross_entropy`` (with ``ignore_index``), ``torch.optim.AdamW``,
``torch.nn.utils.clip_grad_norm_``, closed forms written here (cosine schedule, softmax − one-hot
gradient), Hugging Face's position-id formula, ``tiktoken`` for the tokenization of whole
examples, and ``torch.autograd.gradcheck``. Models are tiny random-init GPT-2s (small vocabularies)
so the file runs in seconds.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import oracles
import pytest
import torch
import torch.nn.functional as F

from cells import failing, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook
from helpers.world import EOT_TOKEN, World, format_example, format_prompt

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_sft" / "02_sft.ipynb"
EOS = 50256


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def tiny_gpt2(nb, vocab: int = 48, n_positions: int = 32, n_embd: int = 16, n_layer: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return nb.GPT2(nb.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2))


def random_batch(gen: torch.Generator, vocab: int, lens: list[int], prompt_lens: list[int], side: str) -> dict:
    """A padded batch built by hand (not with the notebook's pad_batch)."""
    T = max(lens)
    ids = torch.randint(0, vocab, (len(lens), T), generator=gen)
    attn = torch.zeros(len(lens), T, dtype=torch.long)
    lm = torch.zeros(len(lens), T, dtype=torch.long)
    for b, (n, p) in enumerate(zip(lens, prompt_lens)):
        start = 0 if side == "right" else T - n
        attn[b, start:start + n] = 1
        lm[b, start + p:start + n] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": lm}


def ce_oracle(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    V = logits.shape[-1]
    target = ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), target.reshape(-1), ignore_index=-100, reduction=reduction)


# ----------------------------------------------------------------------------- build_sft_example


def expected_example(prompt: list[int], response: list[int], eos: int, max_len: int):
    """Oracle by search: the longest prompt suffix + response prefix that fits, preferring response tokens."""
    full = response + [eos]
    for n_resp in range(len(full), 0, -1):  # as many response tokens as possible ...
        for n_prompt in range(len(prompt), 0, -1):  # ... then as many prompt tokens as possible
            if n_resp + n_prompt <= max_len:
                return prompt[len(prompt) - n_prompt:] + full[:n_resp], [0] * n_prompt + [1] * n_resp
    raise AssertionError("unreachable for max_len >= 2")


def test_build_sft_example_matches_search_oracle(nb):
    rng = random.Random(0)
    for _ in range(2000):
        prompt = [rng.randrange(50000) for _ in range(rng.randint(1, 15))]
        response = [rng.randrange(50000) for _ in range(rng.randint(0, 15))]
        max_len = rng.randint(2, 35)
        ids, mask = nb.build_sft_example(prompt, response, EOS, max_len)
        assert ids.dtype == torch.long and mask.dtype == torch.long and ids.dim() == 1
        exp_ids, exp_mask = expected_example(prompt, response, EOS, max_len)
        assert ids.tolist() == exp_ids and mask.tolist() == exp_mask, (prompt, response, max_len)


def test_build_sft_example_properties(nb):
    rng = random.Random(1)
    for _ in range(500):
        P, R, max_len = rng.randint(1, 20), rng.randint(0, 20), rng.randint(2, 45)
        prompt = torch.randint(0, 1000, (P,))
        response = torch.randint(0, 1000, (R,))
        ids, mask = nb.build_sft_example(prompt, response, EOS, max_len)
        n = len(ids)
        assert len(mask) == n <= max_len
        n_prompt = int((mask == 0).sum())
        assert n_prompt >= 1 and mask[:n_prompt].eq(0).all() and mask[n_prompt:].eq(1).all()
        assert ids[:n_prompt].tolist() == prompt.tolist()[P - n_prompt:]  # a suffix of the prompt
        kept = ids[n_prompt:].tolist()
        assert kept == (response.tolist() + [EOS])[: len(kept)]  # a prefix of response + EOS
        fits = P + R + 1 <= max_len
        assert (n == P + R + 1) if fits else (n == max_len)
        # EOS is the last token exactly when the whole response was kept.
        assert (ids[-1].item() == EOS and len(kept) == R + 1) == (R + 1 <= max_len - 1)


def test_build_sft_example_errors(nb):
    with pytest.raises(ValueError):
        nb.build_sft_example([], [1], EOS, 8)
    with pytest.raises(ValueError):
        nb.build_sft_example([1], [1], EOS, 1)
    with pytest.raises(TypeError):
        nb.build_sft_example(torch.tensor([1.5]), [1], EOS, 8)
    with pytest.raises(TypeError):
        nb.build_sft_example("abc", [1], EOS, 8)


def test_examples_tokenize_like_tiktoken_on_the_whole_text(nb):
    """prompt ids + ' response' ids + EOS == tiktoken(format_example): splitting the text is harmless."""
    from helpers import vocab

    enc = oracles.gpt2_tiktoken()
    ranks = vocab.load_gpt2_ranks()
    demos = World(0).demonstrations("train")[:150]
    for d in demos:
        ids, mask = nb.build_sft_example(nb.encode(format_prompt(d["prompt"]), ranks),
                                         nb.encode(" " + d["response"], ranks), EOS, 1024)
        assert ids.tolist() == enc.encode(format_example(d["prompt"], d["response"]), allowed_special={EOT_TOKEN})
        assert int(mask.sum()) == len(enc.encode(" " + d["response"])) + 1


# ----------------------------------------------------------------------------- pad_batch, position ids


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch_round_trips_through_the_mask(nb, side):
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        lens = torch.randint(0, 9, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
        lens[0] = max(lens[0], 1)
        seqs = [torch.randint(0, 100, (n,), generator=gen) for n in lens]
        batch, mask = nb.pad_batch(seqs, -7, side)
        assert batch.shape == mask.shape == (len(seqs), max(lens)) and mask.dtype == torch.long
        for row, m, s in zip(batch, mask, seqs):
            assert row[m.bool()].tolist() == s.tolist()
            assert (row[~m.bool()] == -7).all()
            real = m.nonzero().flatten().tolist()
            if real:  # real tokens are one contiguous block at the chosen end
                assert real == list(range(real[0], real[0] + len(s)))
                assert (real[0] == 0) if side == "right" else (real[-1] == len(m) - 1)


def test_pad_batch_errors(nb):
    with pytest.raises(ValueError):
        nb.pad_batch([torch.tensor([1])], 0, "center")
    with pytest.raises(ValueError):
        nb.pad_batch([], 0, "left")


def test_position_ids_match_hf_formula_on_real_tokens(nb):
    gen = torch.Generator().manual_seed(3)
    for _ in range(40):
        B, T = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
        mask = (torch.rand(B, T, generator=gen) < 0.7).long()
        # Hugging Face GPT-2 / TRL: position_ids = cumsum(mask) - 1, padding filled with 1.
        hf = mask.cumsum(-1) - 1
        hf = hf.masked_fill(mask == 0, 1)
        got = nb.position_ids_from_mask(mask)
        assert got.dtype == torch.long
        assert torch.equal(got[mask.bool()], hf[mask.bool()])
        assert (got >= 0).all()
        # Leading padding sits at position 0.
        for b in range(B):
            first = mask[b].nonzero()
            lead = T if len(first) == 0 else int(first[0])
            assert (got[b, :lead] == 0).all()


def test_left_padding_gives_the_logits_of_the_unpadded_sequence(nb):
    model = tiny_gpt2(nb).eval()
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 48, (n,), generator=gen) for n in (7, 3, 5)]
    batch, mask = nb.pad_batch(seqs, 0, "left")
    with torch.no_grad():
        logits = model(batch, mask, nb.position_ids_from_mask(mask))
        for b, s in enumerate(seqs):
            alone = model(s[None])[0]
            torch.testing.assert_close(logits[b, -len(s):], alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- sft_loss


def test_sft_loss_matches_cross_entropy(nb):
    gen = torch.Generator().manual_seed(5)
    for side in ("left", "right"):
        for _ in range(20):
            lens = torch.randint(2, 10, (3,), generator=gen).tolist()
            batch = random_batch(gen, 13, lens, [1 + int(torch.randint(0, n - 1, (1,), generator=gen)) for n in lens], side)
            logits = torch.randn(3, max(lens), 13, generator=gen, dtype=torch.float64) * 4
            got = nb.sft_loss(logits, batch["input_ids"], batch["loss_mask"])
            torch.testing.assert_close(got, ce_oracle(logits, batch["input_ids"], batch["loss_mask"]), atol=1e-12, rtol=1e-12)


def test_sft_loss_gradient_is_softmax_minus_onehot_and_zero_elsewhere(nb):
    gen = torch.Generator().manual_seed(6)
    batch = random_batch(gen, 9, [8, 5, 6], [3, 2, 4], "right")
    ids, lm = batch["input_ids"], batch["loss_mask"]
    logits = (torch.randn(3, 8, 9, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    nb.sft_loss(logits, ids, lm).backward()
    trained = torch.zeros(3, 8, dtype=torch.bool)
    trained[:, :-1] = lm[:, 1:].bool()
    n = int(trained.sum())
    expected = torch.zeros_like(logits)
    for b, t in trained.nonzero().tolist():
        expected[b, t] = (torch.softmax(logits[b, t].detach(), -1) - F.one_hot(ids[b, t + 1], 9).double()) / n
    torch.testing.assert_close(logits.grad, expected, atol=1e-14, rtol=1e-12)
    assert (logits.grad[~trained] == 0).all(), "gradient must be exactly zero off the trained positions"
    small = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    lm_small = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert torch.autograd.gradcheck(lambda z: nb.sft_loss(z, ids[:2, :5] % 4, lm_small), (small,))


def test_sft_loss_is_a_token_mean_not_a_row_mean(nb):
    logits = torch.zeros(2, 6, 4, dtype=torch.float64)
    logits[0, :, 0] = 5.0  # row 0 is confident about token 0
    ids = torch.zeros(2, 6, dtype=torch.long)
    lm = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]])  # 1 token vs 5 tokens
    row0 = -torch.log_softmax(logits[0, 0], -1)[0]
    row1 = torch.tensor(math.log(4), dtype=torch.float64)
    torch.testing.assert_close(nb.sft_loss(logits, ids, lm), (row0 + 5 * row1) / 6)


def test_sft_loss_rejects_empty_masks(nb):
    with pytest.raises(ValueError):
        nb.sft_loss(torch.randn(2, 4, 5), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        nb.sft_loss(torch.randn(2, 1, 5), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))


# ----------------------------------------------------------------------------- optimiser pieces


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e3])
def test_clip_grad_norm_matches_torch(nb, max_norm):
    gen = torch.Generator().manual_seed(7)
    shapes = [(4, 5), (7,), (2, 3, 4), (1,)]
    ours = [torch.zeros(s, requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, requires_grad=True) for s in shapes]
    for a, b in zip(ours, theirs):
        g = torch.randn(a.shape, generator=gen) * 3
        a.grad, b.grad = g.clone(), g.clone()
    closed = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ours))
    got = nb.clip_grad_norm_((p for p in ours), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(got, float)
    assert got == pytest.approx(closed, rel=1e-6) and got == pytest.approx(float(ref), rel=1e-6)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-6)
    after = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ours))
    assert after == pytest.approx(min(closed, max_norm), rel=1e-5)


def test_cosine_lr_closed_form_and_shape(nb):
    warmup, total, peak, floor = 10, 110, 3e-4, 3e-5
    lrs = [nb.cosine_lr(s, warmup, total, peak, floor) for s in range(total + 10)]
    for s, lr in enumerate(lrs):
        if s < warmup:
            expected = peak * (s + 1) / warmup
        elif s < total:
            expected = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        else:
            expected = floor
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))  # strictly rising warm-up
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # never rising afterwards
    assert max(lrs) == pytest.approx(peak) and min(lrs) == pytest.approx(floor)
    assert nb.cosine_lr(60, 10, 110, 1.0, 0.0) == pytest.approx(0.5)  # halfway down


@pytest.mark.parametrize("weight_decay,betas,eps", [(0.0, (0.9, 0.999), 1e-8), (0.1, (0.9, 0.95), 1e-8), (0.5, (0.8, 0.99), 1e-4)])
def test_adamw_step_matches_torch_adamw_over_20_steps(nb, weight_decay, betas, eps):
    gen = torch.Generator().manual_seed(8)
    shapes = [(6, 4), (4,), (3, 2, 5), (1,), (10, 1)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = torch.optim.AdamW(theirs, lr=1e-2, betas=betas, eps=eps, weight_decay=weight_decay)
    state: dict = {}
    for step in range(20):
        lr = 1e-2 * (1 + math.cos(math.pi * step / 20)) / 2 + 1e-4
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [torch.randn(s, generator=gen) * 10.0 ** ((step % 4) - 2) for s in shapes]
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
        nb.adamw_step(ours, grads, state, lr, betas, eps, weight_decay)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)
    for i, p in enumerate(theirs):
        assert state[i]["step"] == 20
        torch.testing.assert_close(state[i]["exp_avg"], opt.state[p]["exp_avg"], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(state[i]["exp_avg_sq"], opt.state[p]["exp_avg_sq"], atol=1e-9, rtol=1e-5)


# ----------------------------------------------------------------------------- training step, perplexity


def test_sft_train_step_matches_a_torch_reference(nb):
    gen = torch.Generator().manual_seed(9)
    ours = tiny_gpt2(nb, seed=1).double()  # float64: Adam magnifies float32 rounding of tiny gradients
    ref = copy.deepcopy(ours)
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    state: dict = {}
    for step in range(4):
        side = "left" if step % 2 else "right"
        batch = random_batch(gen, 48, [9, 12, 5, 7], [3, 5, 2, 2], side)
        lr = [3e-3, 1e-2, 5e-3, 1e-3][step]
        loss, gn = nb.sft_train_step(ours, batch, state, lr, max_grad_norm=0.5, weight_decay=0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        ref_loss = ce_oracle(ref(batch["input_ids"], batch["attention_mask"]), batch["input_ids"], batch["loss_mask"])
        ref_loss.backward()
        ref_gn = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
        opt.step()
        assert isinstance(loss, float) and isinstance(gn, float)
        assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
        assert gn == pytest.approx(float(ref_gn), rel=1e-9)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), atol=1e-10, rtol=1e-8, msg=f"{name} after step {step}")


def test_left_and_right_padding_train_identically(nb):
    """Position ids from the mask make a left-padded batch equivalent to the right-padded one."""
    gen = torch.Generator().manual_seed(10)
    seqs = [torch.randint(0, 48, (n,), generator=gen) for n in (9, 4, 6)]
    masks = [torch.tensor([0] * 2 + [1] * (len(s) - 2)) for s in seqs]
    batches = {}
    for side in ("left", "right"):
        ids, attn = nb.pad_batch(seqs, EOS % 48, side)
        lm, _ = nb.pad_batch(masks, 0, side)
        batches[side] = {"input_ids": ids, "attention_mask": attn, "loss_mask": lm}
    models = {side: tiny_gpt2(nb, seed=3) for side in batches}
    for side, model in models.items():
        state: dict = {}
        losses = [nb.sft_train_step(model, batches[side], state, 1e-2)[0] for _ in range(3)]
        models[side].losses = losses
    assert models["left"].losses == pytest.approx(models["right"].losses, rel=1e-5)
    for a, b in zip(models["left"].parameters(), models["right"].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_perplexity_is_token_weighted_over_batches(nb):
    gen = torch.Generator().manual_seed(11)
    model = tiny_gpt2(nb, seed=2)
    batches = [random_batch(gen, 48, [12, 11, 10, 9], [2, 2, 2, 2], "right"),  # many tokens
               random_batch(gen, 48, [3], [2], "left")]  # one token
    nll, count = 0.0, 0
    per_batch = []
    with torch.no_grad():
        for b in batches:
            s = ce_oracle(model(b["input_ids"], b["attention_mask"]), b["input_ids"], b["loss_mask"], "sum")
            k = int(b["loss_mask"][:, 1:].sum())
            nll, count = nll + float(s), count + k
            per_batch.append(float(s) / k)
    expected = math.exp(nll / count)
    got = nb.perplexity(model, batches)
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(got - math.exp(sum(per_batch) / 2)) > 1e-3 * expected  # the test can tell the wrong mean apart
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- end to end


def synthetic_examples(nb, n: int, seed: int, vocab: int = 40):
    """Prompt: 2..5 tokens from [3, vocab); response: the prompt reversed, then EOS (id 1)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [2] + [rng.randrange(3, vocab) for _ in range(rng.randint(2, 5))]  # 2 = a BOS-like marker
        out.append(nb.build_sft_example(prompt, prompt[:0:-1], 1, 16))
    return out


def test_end_to_end_sft_lowers_the_loss_and_learns_to_stop(nb):
    torch.manual_seed(0)
    model = nb.GPT2(nb.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    train, val = synthetic_examples(nb, 256, seed=0), synthetic_examples(nb, 64, seed=1)
    config = nb.SFTConfig(steps=100, batch_size=16, peak_lr=3e-3, min_lr=3e-4, warmup=10, eval_every=25)
    ticks = []
    history = nb.train_sft(model, train, val, config, pad_id=1, progress=lambda it: (ticks.append(x) or x for x in it))
    assert ticks == list(range(100))
    assert len(history["train_loss"]) == len(history["lr"]) == len(history["grad_norm"]) == 100
    assert history["val_step"] == [0, 25, 50, 75, 100]
    assert history["lr"][9] == pytest.approx(3e-3) and history["lr"][-1] < 4e-4
    # From about uniform (log 40 = 3.7 nats) to clearly better: the reversal is being learnt.
    assert history["val_ppl"][-1] < 0.5 * history["val_ppl"][0], history["val_ppl"]
    first, last = sum(history["train_loss"][:10]) / 10, sum(history["train_loss"][-10:]) / 10
    assert last < first - 0.8, (first, last)
    assert not model.training
    # Greedy generation from the fine-tuned model ends with EOS (id 1) on most validation prompts.
    prompts = [ids[mask == 0].tolist() for ids, mask in val[:16]]
    batch, attn = nb.pad_batch([torch.tensor(p) for p in prompts], 1, "left")
    tokens, resp = nb.generate(model, batch, attn, 8, eos_id=1, temperature=0.0)
    stopped = sum(int((row[m.bool()] == 1).any()) for row, m in zip(tokens[:, batch.shape[1]:], resp))
    assert stopped >= 12, f"only {stopped}/16 greedy responses ended with EOS"


def test_generate_responses_cuts_at_eos(nb):
    class Scripted(torch.nn.Module):
        """A 'model' that always emits token 5, then EOS: logits favour 5 after the prompt, EOS after a 5."""

        def __init__(self):
            super().__init__()
            self.gpt = tiny_gpt2(nb, vocab=50257, n_embd=8, n_layer=1, n_positions=32)
            self.config = self.gpt.config

        def hidden_states_cached(self, input_ids, attention_mask=None, position_ids=None, past_kv=None):
            return input_ids, None  # "hidden state" = the token itself

        def lm_head(self, h):
            logits = torch.full((*h.shape, 50257), -1e9)
            logits[..., 5] = 0.0
            logits[..., EOS] = torch.where(h == 5, 1e9, -1e9)
            return logits

    ranks = __import__("helpers.vocab", fromlist=["load_gpt2_ranks"]).load_gpt2_ranks()
    texts = nb.generate_responses(Scripted(), [[10, 11, 12], [13]], ranks, max_new_tokens=6)
    assert texts == [nb.decode([5], ranks).strip()] * 2


# ----------------------------------------------------------------------------- the SFT artifact pipeline


@pytest.fixture(scope="module")
def pipeline(nb):
    from helpers import sft_pipeline

    return sft_pipeline


def test_pipeline_examples_are_the_world_demonstrations(pipeline):
    world = World(0)
    examples = pipeline.sft_examples(world, "val")
    demos = world.demonstrations("val")
    assert len(examples) == len(demos)
    for ids, mask in examples:
        assert len(ids) <= pipeline.MAX_LEN and ids[-1].item() == EOS and mask[-1].item() == 1
        assert mask[0].item() == 0 and int(mask.sum()) < len(mask)


def test_pipeline_trains_through_the_exported_notebook_code(pipeline, monkeypatch):
    """build_sft_model runs minirlhf.sft's train_sft -> sft_train_step (no private copy), tiny config."""
    import minirlhf.sft as exported

    calls = []
    real_step = exported.sft_train_step

    def counting_step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(exported, "sft_train_step", counting_step)
    torch.manual_seed(0)
    base = exported.GPT2(exported.GPT2Config(n_positions=128, n_embd=16, n_layer=1, n_head=2))
    before = copy.deepcopy(base.state_dict())
    model, history = pipeline.build_sft_model(tiny=True, base=base, progress=False)
    config = exported.TINY_SFT_CONFIG
    assert len(calls) == config.steps == len(history["train_loss"])
    assert history["val_step"][0] == 0 and history["val_step"][-1] == config.steps
    assert model is base and not model.training
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(math.isfinite(x) for x in history["train_loss"] + history["val_ppl"])


def test_pipeline_artifact_round_trip_and_key(pipeline, monkeypatch, tmp_path):
    from helpers import artifacts

    assert "sft_model" in artifacts.known()
    material = artifacts._key_material(artifacts._entry("sft_model"), {"tiny": True})
    assert "minirlhf.sft" in material["depends_on"] and "artifact:default_model" in material["depends_on"]
    import minirlhf.sft as exported

    torch.manual_seed(1)
    small = exported.GPT2(exported.GPT2Config(n_positions=128, n_embd=16, n_layer=1, n_head=2))
    monkeypatch.setattr(pipeline, "load_default_model", lambda tiny, world_seed=0: small)
    pipeline._build(tmp_path, tiny=True, seed=0, world_seed=0)
    loaded = pipeline._load(tmp_path, tiny=True, seed=0, world_seed=0)
    for (name, a), b in zip(small.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    history = __import__("json").loads((tmp_path / pipeline.HISTORY_FILE).read_text())
    assert len(history["train_loss"]) == exported.TINY_SFT_CONFIG.steps


# ----------------------------------------------------------------------------- the test cells' bar
#
# The reference passes every test cell; each plausible wrong implementation fails the cell that grades its
# math; a correct implementation without any input checks loses only the validation cells (`*_errors`).


def test_reference_passes_every_test_cell(nb):
    assert failing(run_test_cells(NOTEBOOK, module=nb)) == {}


def _ids(seq) -> list[int]:
    return [int(t) for t in seq]


def _example_factory(*, eos=True, cut_prompt_right=False, eos_after_cut=False, mask_shift=0, response_first=False):
    def build_sft_example(prompt_ids, response_ids, eos_id, max_len):
        p, r = _ids(prompt_ids), _ids(response_ids) + ([int(eos_id)] if eos else [])
        if response_first:  # the prompt is kept whole (up to max_len - 1), the response pays
            n_p = min(len(p), max_len - 1)
            n_r = min(len(r), max_len - n_p)
        else:
            n_r = min(len(r), max_len - 1)
            n_p = min(len(p), max_len - n_r)
        resp = r[:n_r]
        if eos_after_cut and n_r < len(r):
            resp = r[:n_r - 1] + [int(eos_id)]  # a cut response still "ends" with EOS
        kept_p = p[:n_p] if cut_prompt_right else p[len(p) - n_p:]
        mask = [0] * (n_p - mask_shift) + [1] * (n_r + mask_shift)
        return torch.tensor(kept_p + resp, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    return build_sft_example


def _pad_factory(*, ignore_side=False, mask_right=False, fill_zero=False):
    def pad_batch(seqs, pad_id, side="right"):
        B, T = len(seqs), max(len(s) for s in seqs)
        batch = torch.full((B, T), 0 if fill_zero else pad_id, dtype=seqs[0].dtype)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, s in enumerate(seqs):
            n = len(s)
            left = side == "left" and not ignore_side
            if left:
                batch[b, T - n:] = s
            else:
                batch[b, :n] = s
            if left and not mask_right:
                mask[b, T - n:] = 1
            else:
                mask[b, :n] = 1
        return batch, mask
    return pad_batch


def _positions_arange(attention_mask):
    return torch.arange(attention_mask.shape[-1]).expand(attention_mask.shape).clone()


def _positions_from_one(attention_mask):
    return attention_mask.long().cumsum(-1)


def _positions_unclamped(attention_mask):
    return attention_mask.long().cumsum(-1) - 1


def _loss_factory(*, shift=True, row_mean=False, mask_unshifted=False, count_position_0=False, masked=True):
    def sft_loss(logits, input_ids, loss_mask):
        if shift:
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
            m = (loss_mask[:, :-1] if mask_unshifted else loss_mask[:, 1:]).to(lp.dtype)
        else:
            lp = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None])[..., 0]
            m = loss_mask.to(lp.dtype)
        if not masked:
            m = torch.ones_like(m)
        if row_mean:
            rows = m.sum(-1) > 0
            return -((lp * m).sum(-1)[rows] / m.sum(-1)[rows]).mean()
        n = loss_mask.to(lp.dtype).sum() if count_position_0 else m.sum()
        return -(lp * m).sum() / n
    return sft_loss


def _clip_factory(*, per_tensor=False, return_after=False, always=False, scale_nonfinite=False):
    def clip_grad_norm_(params, max_norm):
        grads = [p.grad for p in params if p.grad is not None]
        total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if per_tensor:
            for g in grads:
                n = float(g.double().norm())
                if n > max_norm:
                    g.mul_(max_norm / (n + 1e-6))
            return total
        if not math.isfinite(total) and not scale_nonfinite:
            return total
        scale = max_norm / (total + 1e-6)
        if scale < 1.0 or always:
            for g in grads:
                g.mul_(scale)
        return min(total, max_norm) if return_after else total
    return clip_grad_norm_


def _lr_factory(*, warmup_from_zero=False, cosine_over_total=False, ignore_floor=False):
    def cosine_lr(step, warmup, total, peak, floor=0.0):
        floor = 0.0 if ignore_floor else floor
        if step < warmup:
            return peak * (step if warmup_from_zero else step + 1) / warmup
        if step >= total:
            return float(floor)
        progress = step / total if cosine_over_total else (step - warmup) / (total - warmup)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    return cosine_lr


def _adamw_factory(*, bias_correction=True, coupled_decay=False, eps_inside=False, decay_after=False,
                   shared_step=False):
    def adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        b1, b2 = betas
        if shared_step:
            state["t"] = state.get("t", 0) + 1
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if g is None:
                    continue
                s = state.setdefault(i, {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
                s["step"] += 1
                t = state["t"] if shared_step else s["step"]
                if coupled_decay:
                    g = g + weight_decay * p
                elif not decay_after:
                    p.mul_(1 - lr * weight_decay)
                s["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                s["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
                v_hat = s["exp_avg_sq"] / c2
                denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
                p.sub_(lr * (s["exp_avg"] / c1) / denom)
                if decay_after and not coupled_decay:
                    p.mul_(1 - lr * weight_decay)
    return adamw_step


def _train_step_factory(nb, *, zero_grad=True, decay_all=False, clip=True, loss_after=False, skip_nonfinite=True):
    def sft_train_step(model, batch, opt_state, lr, *, max_grad_norm=1.0, weight_decay=0.1, betas=(0.9, 0.95),
                       eps=1e-8):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if zero_grad:
            for p in params:
                p.grad = None
        ids, attn = batch["input_ids"], batch["attention_mask"]
        loss = nb.sft_loss(model(ids, attn, nb.position_ids_from_mask(attn)), ids, batch["loss_mask"])
        loss.backward()
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))
        if clip:
            nb.clip_grad_norm_(params, max_grad_norm)
        if math.isfinite(norm) or not skip_nonfinite:
            decay = params if decay_all else [p for p in params if p.dim() >= 2]
            rest = [] if decay_all else [p for p in params if p.dim() < 2]
            nb.adamw_step(decay, [p.grad for p in decay], opt_state.setdefault("decay", {}), lr, betas, eps, weight_decay)
            nb.adamw_step(rest, [p.grad for p in rest], opt_state.setdefault("no_decay", {}), lr, betas, eps, 0.0)
        if loss_after:
            with torch.no_grad():
                loss = nb.sft_loss(model(ids, attn, nb.position_ids_from_mask(attn)), ids, batch["loss_mask"])
        return loss.item(), norm
    return sft_train_step


def _ppl_factory(nb, *, mean_of_ppl=False, mean_of_losses=False, restore_mode=True, count_position_0=False):
    def perplexity(model, batches):
        was = model.training
        model.eval()
        nll, count, per_batch = 0.0, 0, []
        with torch.no_grad():
            for b in batches:
                ids, attn, lm = b["input_ids"], b["attention_mask"], b["loss_mask"]
                n = int(lm.bool().sum()) if count_position_0 else int(lm[:, 1:].bool().sum())
                if int(lm[:, 1:].bool().sum()) == 0:
                    continue
                loss = float(nb.sft_loss(model(ids, attn, nb.position_ids_from_mask(attn)), ids, lm))
                nll, count = nll + loss * int(lm[:, 1:].bool().sum()), count + n
                per_batch.append(loss)
        if restore_mode:
            model.train(was)
        if mean_of_ppl:
            return sum(math.exp(x) for x in per_batch) / len(per_batch)
        if mean_of_losses:
            return math.exp(sum(per_batch) / len(per_batch))
        return math.exp(nll / count)
    return perplexity


def wrong_variants(nb):
    """(description, {name: wrong definition}, cell that must fail)."""
    return [
        ("no EOS after the response", {"build_sft_example": _example_factory(eos=False)}, "test_build_sft_example"),
        ("prompt cut from the right (its start kept)", {"build_sft_example": _example_factory(cut_prompt_right=True)},
         "test_build_sft_example"),
        ("a cut response still ends with EOS", {"build_sft_example": _example_factory(eos_after_cut=True)},
         "test_build_sft_example"),
        ("loss mask also on the last prompt token", {"build_sft_example": _example_factory(mask_shift=1)},
         "test_build_sft_example"),
        ("the response is cut before the prompt", {"build_sft_example": _example_factory(response_first=True)},
         "test_build_sft_example"),
        ("side ignored: always right padding", {"pad_batch": _pad_factory(ignore_side=True)}, "test_pad_batch"),
        ("left padding with a right-padding mask", {"pad_batch": _pad_factory(mask_right=True)}, "test_pad_batch"),
        ("padded with 0, not pad_id", {"pad_batch": _pad_factory(fill_zero=True)}, "test_pad_batch"),
        ("positions 0..T-1 whatever the padding", {"position_ids_from_mask": _positions_arange},
         "test_position_ids_from_mask"),
        ("positions counted from 1", {"position_ids_from_mask": _positions_from_one}, "test_position_ids_from_mask"),
        ("-1 on left padding (no clamp)", {"position_ids_from_mask": _positions_unclamped}, "test_position_ids_from_mask"),
        ("no shift: logits[:, t] scored against token t", {"sft_loss": _loss_factory(shift=False)}, "test_sft_loss"),
        ("mean of per-row means", {"sft_loss": _loss_factory(row_mean=True)}, "test_sft_loss"),
        ("loss mask not shifted with the targets", {"sft_loss": _loss_factory(mask_unshifted=True)}, "test_sft_loss"),
        ("N counts loss_mask[:, 0]", {"sft_loss": _loss_factory(count_position_0=True)}, "test_sft_loss"),
        ("prompt and padding trained too", {"sft_loss": _loss_factory(masked=False)}, "test_sft_loss"),
        ("each tensor clipped on its own", {"clip_grad_norm_": _clip_factory(per_tensor=True)}, "test_clip_grad_norm_"),
        ("returns the norm after clipping", {"clip_grad_norm_": _clip_factory(return_after=True)}, "test_clip_grad_norm_"),
        ("small gradients scaled up to max_norm", {"clip_grad_norm_": _clip_factory(always=True)}, "test_clip_grad_norm_"),
        ("a non-finite norm still rescales (nan gradients)", {"clip_grad_norm_": _clip_factory(scale_nonfinite=True)},
         "test_clip_grad_norm_"),
        ("warm-up starts at 0 (step / W)", {"cosine_lr": _lr_factory(warmup_from_zero=True)}, "test_cosine_lr"),
        ("cosine over all S steps, not S - W", {"cosine_lr": _lr_factory(cosine_over_total=True)}, "test_cosine_lr"),
        ("decays to 0, ignoring the floor", {"cosine_lr": _lr_factory(ignore_floor=True)}, "test_cosine_lr"),
        ("no bias correction", {"adamw_step": _adamw_factory(bias_correction=False)}, "test_adamw_step"),
        ("L2 penalty in the gradient (Adam, not AdamW)", {"adamw_step": _adamw_factory(coupled_decay=True)},
         "test_adamw_step"),
        ("eps inside the square root", {"adamw_step": _adamw_factory(eps_inside=True)}, "test_adamw_step"),
        ("decay applied after the update", {"adamw_step": _adamw_factory(decay_after=True)}, "test_adamw_step"),
        ("one step count for all parameters", {"adamw_step": _adamw_factory(shared_step=True)}, "test_adamw_step"),
        ("gradients never reset", {"sft_train_step": _train_step_factory(nb, zero_grad=False)}, "test_sft_train_step"),
        ("weight decay on biases and LayerNorm too", {"sft_train_step": _train_step_factory(nb, decay_all=True)},
         "test_sft_train_step"),
        ("no gradient clipping", {"sft_train_step": _train_step_factory(nb, clip=False)}, "test_sft_train_step"),
        ("loss reported after the update", {"sft_train_step": _train_step_factory(nb, loss_after=True)},
         "test_sft_train_step"),
        ("update taken on a non-finite gradient norm", {"sft_train_step": _train_step_factory(nb, skip_nonfinite=False)},
         "test_sft_train_step"),
        ("mean of per-batch perplexities", {"perplexity": _ppl_factory(nb, mean_of_ppl=True)}, "test_perplexity"),
        ("exp of the mean of per-batch losses", {"perplexity": _ppl_factory(nb, mean_of_losses=True)}, "test_perplexity"),
        ("training mode not restored", {"perplexity": _ppl_factory(nb, restore_mode=False)}, "test_perplexity"),
        ("token count includes loss_mask[:, 0]", {"perplexity": _ppl_factory(nb, count_position_0=True)},
         "test_perplexity"),
    ]


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    survivors = surviving_variants(NOTEBOOK, nb, wrong_variants(nb))
    assert not survivors, f"wrong implementations that still pass: {survivors}"


def test_correct_variants_pass_their_cells(nb):
    """The factories' defaults are correct implementations: the wrong variants differ from them in one idea."""
    correct = [("correct", {"build_sft_example": _example_factory()}, "test_build_sft_example"),
               ("correct", {"pad_batch": _pad_factory()}, "test_pad_batch"),
               ("correct", {"sft_loss": _loss_factory()}, "test_sft_loss"),
               ("correct", {"clip_grad_norm_": _clip_factory()}, "test_clip_grad_norm_"),
               ("correct", {"cosine_lr": _lr_factory()}, "test_cosine_lr"),
               ("correct", {"adamw_step": _adamw_factory()}, "test_adamw_step"),
               ("correct", {"sft_train_step": _train_step_factory(nb)}, "test_sft_train_step"),
               ("correct", {"perplexity": _ppl_factory(nb)}, "test_perplexity")]
    assert len(surviving_variants(NOTEBOOK, nb, correct)) == len(correct)


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every non-validation cell."""

    def build_sft_example(prompt_ids, response_ids, eos_id, max_len):
        p, r = _ids(prompt_ids), _ids(response_ids) + [int(eos_id)]
        n_r = min(len(r), max_len - 1)
        n_p = min(len(p), max_len - n_r)
        return torch.tensor(p[len(p) - n_p:] + r[:n_r]), torch.tensor([0] * n_p + [1] * n_r)

    def pad_batch(seqs, pad_id, side="right"):
        T = max(len(s) for s in seqs)
        rows = [torch.cat([s, s.new_full((T - len(s),), pad_id)]) if side == "right" else
                torch.cat([s.new_full((T - len(s),), pad_id), s]) for s in seqs]
        masks = [torch.tensor([1] * len(s) + [0] * (T - len(s)) if side == "right" else [0] * (T - len(s)) + [1] * len(s))
                 for s in seqs]
        return torch.stack(rows), torch.stack(masks).long()

    def position_ids_from_mask(attention_mask):
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def sft_loss(logits, input_ids, loss_mask):
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
        m = loss_mask[:, 1:].to(lp.dtype)
        return -(lp * m).sum() / m.sum()

    def clip_grad_norm_(params, max_norm):
        grads = [p.grad for p in params if p.grad is not None]
        total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if math.isfinite(total) and max_norm / (total + 1e-6) < 1:
            for g in grads:
                g.mul_(max_norm / (total + 1e-6))
        return total

    def cosine_lr(step, warmup, total, peak, floor=0.0):
        if step < warmup:
            return peak * (step + 1) / warmup
        if step >= total:
            return float(floor)
        return floor + (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2

    def perplexity(model, batches):
        was = model.training
        model.eval()
        nll, count = 0.0, 0
        with torch.no_grad():
            for b in batches:
                ids, attn, lm = b["input_ids"], b["attention_mask"], b["loss_mask"]
                target = ids[:, 1:].masked_fill(lm[:, 1:] == 0, -100)
                logits = model(ids, attn, position_ids_from_mask(attn))[:, :-1]
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                             reduction="sum"))
                count += int((target != -100).sum())
        model.train(was)
        return math.exp(nll / count)

    replace = {"build_sft_example": build_sft_example, "pad_batch": pad_batch,
               "position_ids_from_mask": position_ids_from_mask, "sft_loss": sft_loss, "clip_grad_norm_": clip_grad_norm_,
               "cosine_lr": cosine_lr, "adamw_step": _adamw_factory(), "perplexity": perplexity}
    failed = failing(run_test_cells(NOTEBOOK, replace, module=nb))
    assert failed, "the validation cells must notice the missing checks"
    assert all(cell.endswith("_errors") for cell in failed), failed
    assert sorted(failed) == sorted(f"test_{name}_errors" for name in replace if name != "position_ids_from_mask"), failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []
