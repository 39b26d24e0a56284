"""Notebook 03 (preference data): the reference code against independent oracles.

Oracles: ``itertools.combinations`` and ``math.comb`` (pairs), explicit loops and ``math.exp``
(Bradley–Terry, Kendall agreement), the model's own softmax for sampling frequencies, greedy
generation of each prompt alone (no padding) for the batched sampler, ``tiktoken`` for whole-text
tokenization, exhaustive search for truncation. The comparisons artifact is built with a stub policy
in a temporary cache, so the file runs in seconds.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import oracles
import pytest
import torch

from cells import failing, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook
from helpers.world import EOT_TOKEN, World, format_example, format_prompt

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "03_preference_data" / "03_preference_data.ipynb"
EOS = 50256


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def tiny_gpt2(nb, vocab: int = 12, n_positions: int = 32, n_embd: int = 16, seed: int = 0, dtype=torch.float32):
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=2, n_head=2)).to(dtype).eval()


def permutations(rng: random.Random, k: int) -> list[int]:
    r = list(range(k))
    rng.shuffle(r)
    return r


# ----------------------------------------------------------------------------- sample_k_responses


def test_sampling_shapes_mask_and_eos_filler(nb):
    policy = tiny_gpt2(nb, vocab=6)  # EOS (id 5) is frequent: rows end at different steps
    eos = 5
    prompts = [[1, 2, 3], [4], torch.tensor([0, 1, 2, 3, 4])]
    resp, mask = nb.sample_k_responses(policy, prompts, 5, 1.0, torch.Generator().manual_seed(0), max_new_tokens=9, eos_id=eos)
    assert resp.dtype == torch.long and mask.dtype == torch.long
    assert resp.shape[:2] == (3, 5) and mask.shape == resp.shape and resp.shape[2] <= 9
    saw_early_end = False
    for row, m in zip(resp.reshape(-1, resp.shape[2]).tolist(), mask.reshape(-1, resp.shape[2]).tolist()):
        first = row.index(eos) if eos in row else None
        expected = [1] * len(row) if first is None else [1] * (first + 1) + [0] * (len(row) - first - 1)
        assert m == expected  # 1 up to and including the first EOS
        if first is not None:
            saw_early_end |= first < len(row) - 1
            assert all(t == eos for t in row[first:])  # EOS filler after the end
    assert saw_early_end


def test_sampling_is_reproducible_and_uses_only_the_generator(nb):
    policy = tiny_gpt2(nb, vocab=30)
    prompts = [[1, 2], [3, 4, 5, 6]]
    torch.manual_seed(1)
    a = nb.sample_k_responses(policy, prompts, 4, 1.0, torch.Generator().manual_seed(7), max_new_tokens=8, eos_id=29)
    torch.manual_seed(2)  # a different global state must not matter
    b = nb.sample_k_responses(policy, prompts, 4, 1.0, torch.Generator().manual_seed(7), max_new_tokens=8, eos_id=29)
    c = nb.sample_k_responses(policy, prompts, 4, 1.0, torch.Generator().manual_seed(8), max_new_tokens=8, eos_id=29)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # The K samples of a prompt are (generally) different: K draws, not one draw copied.
    assert len({tuple(r) for r in a[0][1].tolist()}) > 1


def test_greedy_batched_samples_equal_each_prompt_generated_alone(nb):
    """Left padding must not change what a prompt produces: oracle = each prompt alone, no padding."""
    from minirlhf.tokenizer_gpt2 import generate

    policy = tiny_gpt2(nb, vocab=40, dtype=torch.float64)
    prompts = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14]]
    resp, mask = nb.sample_k_responses(policy, prompts, 3, 0.0, None, max_new_tokens=7, eos_id=39)
    for i, p in enumerate(prompts):
        alone, alone_mask = generate(policy, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), 7, eos_id=39,
                                     temperature=0.0)
        n = int(alone_mask.sum())
        for j in range(3):
            assert resp[i, j, :n].tolist() == alone[0, len(p):len(p) + n].tolist()
            assert int(mask[i, j].sum()) == n


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_first_token_frequencies_follow_the_softmax(nb, temperature):
    policy = tiny_gpt2(nb, vocab=6, seed=3)
    prompt = [1, 2, 3]
    K = 6000
    resp, _ = nb.sample_k_responses(policy, [prompt], K, temperature, torch.Generator().manual_seed(11),
                                    max_new_tokens=1, eos_id=5)
    with torch.no_grad():
        probs = torch.softmax(policy(torch.tensor([prompt]))[0, -1].double() / temperature, -1)
    freq = torch.bincount(resp[0, :, 0], minlength=6).double() / K
    assert torch.allclose(freq, probs, atol=0.025), (freq, probs)


def test_sampling_rejects_bad_arguments(nb):
    policy = tiny_gpt2(nb)
    for prompts, k in (([[1]], 0), ([], 2), ([[1], []], 2)):
        with pytest.raises(ValueError):
            nb.sample_k_responses(policy, prompts, k, 1.0, None, max_new_tokens=2, eos_id=11)
    with pytest.raises(ValueError):  # prompt + max_new_tokens beyond n_positions (generate's check)
        nb.sample_k_responses(policy, [list(range(10))], 2, 1.0, None, max_new_tokens=30, eos_id=11)


# ----------------------------------------------------------------------------- dedupe_responses


def test_dedupe_keeps_first_occurrences_in_order(nb):
    rng = random.Random(0)
    pool = ["a.", " a.", "a. ", "A.", "", " ", "b", "b\n", "c c"]
    for _ in range(500):
        responses = [rng.choice(pool) for _ in range(rng.randint(0, 8))]
        firsts = {}
        for i, r in enumerate(responses):
            firsts.setdefault(r.strip(), i)
        kept = sorted(firsts.values())
        unique, idx = nb.dedupe_responses(list(responses))
        assert idx == kept
        assert unique == [responses[i] for i in kept]
        assert len({u.strip() for u in unique}) == len(unique)


# ----------------------------------------------------------------------------- ranking_to_pairs


def test_ranking_to_pairs_is_all_combinations_best_first(nb):
    rng = random.Random(1)
    for k in range(0, 10):
        ranking = permutations(rng, k)
        pairs = nb.ranking_to_pairs(ranking)
        assert pairs == list(itertools.combinations(ranking, 2))
        assert len(pairs) == math.comb(k, 2)
        pos = {item: p for p, item in enumerate(ranking)}
        assert all(pos[c] < pos[r] for c, r in pairs)
        assert all(type(c) is int and type(r) is int for c, r in pairs)


@pytest.mark.parametrize("bad", [[0, 0], [1, 2], [0, 1, 3], [-1, 0]])
def test_ranking_to_pairs_rejects_non_permutations(nb, bad):
    with pytest.raises(ValueError):
        nb.ranking_to_pairs(bad)


# ----------------------------------------------------------------------------- bradley_terry_probability


def test_bradley_terry_matches_math_exp(nb):
    gen = torch.Generator().manual_seed(0)
    r_a = 4 * torch.randn(7, 1, generator=gen, dtype=torch.float64)
    r_b = 4 * torch.randn(5, generator=gen, dtype=torch.float64)
    got = nb.bradley_terry_probability(r_a, r_b)
    assert got.shape == (7, 5) and got.dtype == torch.float64
    for i in range(7):
        for j in range(5):
            x = float(r_a[i, 0] - r_b[j])
            assert math.isclose(float(got[i, j]), 1 / (1 + math.exp(-x)), rel_tol=1e-12, abs_tol=1e-15)


def test_bradley_terry_properties_and_stability(nb):
    bt = nb.bradley_terry_probability
    r = torch.randn(20, dtype=torch.float64)
    s = torch.randn(20, dtype=torch.float64)
    assert torch.allclose(bt(r, s) + bt(s, r), torch.ones(20, dtype=torch.float64))
    assert torch.allclose(bt(r + 3.7, s + 3.7), bt(r, s))  # only differences matter
    assert torch.equal(bt(r, r), torch.full((20,), 0.5, dtype=torch.float64))
    big = torch.tensor([800.0, -800.0, 1e30, -1e30], requires_grad=True)
    p = bt(big, torch.zeros(4))
    assert p.tolist() == [1.0, 0.0, 1.0, 0.0]
    p.sum().backward()
    assert torch.isfinite(big.grad).all()


def test_bradley_terry_gradients(nb):
    r_a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    r_b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nb.bradley_terry_probability, (r_a, r_b))
    p = nb.bradley_terry_probability(r_a, r_b)
    p.sum().backward()
    expected = (p * (1 - p)).detach()
    assert torch.allclose(r_a.grad, expected) and torch.allclose(r_b.grad, -expected)


# ----------------------------------------------------------------------------- agreement_rate


def kendall_agreement(a: list[int], b: list[int]) -> float:
    """1 - (discordant pairs) / C(K, 2), discordance counted on the positions of every item pair."""
    pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}
    discordant = sum((pos_a[u] - pos_a[v]) * (pos_b[u] - pos_b[v]) < 0 for u, v in itertools.combinations(range(len(a)), 2))
    return 1 - discordant / math.comb(len(a), 2)


def test_agreement_rate_matches_kendall(nb):
    rng = random.Random(2)
    for _ in range(400):
        k = rng.randint(2, 9)
        a, b = permutations(rng, k), permutations(rng, k)
        got = nb.agreement_rate(a, b)
        assert type(got) is float
        assert math.isclose(got, kendall_agreement(a, b), abs_tol=1e-12)
        assert got == nb.agreement_rate(b, a)
        assert nb.agreement_rate(a, list(a)) == 1.0
        assert nb.agreement_rate(a, a[::-1]) == 0.0


def test_agreement_of_two_simulated_labelers_is_below_one(nb):
    from helpers.labeling import simulated_labeler

    world = World(0)
    prompt = world.prompts("train")[0]
    responses = world.sample_responses(prompt, 6, random.Random(0))
    same = [nb.agreement_rate(simulated_labeler(world, 0.0, 1)(prompt, responses),
                              simulated_labeler(world, 0.0, 2)(prompt, responses))]
    assert same == [1.0]  # noiseless labelers agree (ties are broken by position, identically)


@pytest.mark.parametrize("a,b", [([0, 1], [0, 1, 2]), ([0], [0]), ([0, 0, 1], [0, 1, 2])])
def test_agreement_rate_rejects_bad_rankings(nb, a, b):
    with pytest.raises(ValueError):
        nb.agreement_rate(a, b)


# ----------------------------------------------------------------------------- split_by_prompt


def records_for(rng: random.Random, n_prompts: int, per_prompt: int = 3) -> list[dict]:
    return [{"prompt": f"prompt {rng.randrange(n_prompts)}", "id": i} for i in range(per_prompt * n_prompts)]


def expected_counts(n: int, fractions) -> list[int]:
    bounds, c = [], 0.0
    for f in fractions:
        c += f
        bounds.append(round(n * c))
    bounds[-1] = n
    return [hi - lo for lo, hi in zip([0] + bounds[:-1], bounds)]


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.9, 0.1), (1.0,), (0.3, 0.3, 0.4), (0.5, 0.0, 0.5)])
def test_split_by_prompt_properties(nb, fractions):
    rng = random.Random(3)
    for trial in range(20):
        records = records_for(rng, rng.randint(1, 40))
        parts = nb.split_by_prompt(records, fractions, trial)
        assert len(parts) == len(fractions)
        # covering and disjoint, same objects
        assert sorted(id(r) for p in parts for r in p) == sorted(id(r) for r in records)
        prompt_sets = [{r["prompt"] for r in p} for p in parts]
        for s, t in itertools.combinations(range(len(parts)), 2):
            assert not prompt_sets[s] & prompt_sets[t]
        # order kept inside each part
        for p in parts:
            assert [r["id"] for r in p] == sorted(r["id"] for r in p)
        # sizes (in prompts) follow the rounding of the cumulative fractions
        n = len({r["prompt"] for r in records})
        if not any(abs((n * sum(fractions[: s + 1])) % 1 - 0.5) < 1e-9 for s in range(len(fractions))):
            assert [len(s) for s in prompt_sets] == expected_counts(n, fractions)
        # deterministic, and independent of the order of the records
        assert nb.split_by_prompt(records, fractions, trial) == parts
        shuffled = list(records)
        rng.shuffle(shuffled)
        again = nb.split_by_prompt(shuffled, fractions, trial)
        assert [{r["prompt"] for r in p} for p in again] == prompt_sets


def test_split_by_prompt_depends_on_the_seed_and_validates(nb):
    records = [{"prompt": str(i)} for i in range(50)]
    splits = {tuple(r["prompt"] for r in nb.split_by_prompt(records, (0.5, 0.5), seed)[0]) for seed in range(8)}
    assert len(splits) == 8
    assert nb.split_by_prompt([], (0.9, 0.1), 0) == [[], []]
    for bad in ((0.5, 0.4), (1.1, -0.1), ()):
        with pytest.raises(ValueError):
            nb.split_by_prompt(records, bad, 0)


# ----------------------------------------------------------------------------- tokenize_comparison


def search_truncation(p: list[int], c: list[int], r: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Oracle by search: the longest shared prompt suffix (>= 1 token) that fits next to the longer
    response + EOS; if none fits, one prompt token and the responses cut from the right."""
    c, r = c + [EOS], r + [EOS]
    for n_p in range(len(p), 0, -1):
        if n_p + max(len(c), len(r)) <= max_len:
            return p[len(p) - n_p:] + c, p[len(p) - n_p:] + r
    return p[-1:] + c[: max_len - 1], p[-1:] + r[: max_len - 1]


def test_tokenize_comparison_truncation_padding_and_masks(nb):
    rng = random.Random(4)
    for _ in range(1500):
        p = [rng.randrange(50000) for _ in range(rng.randint(1, 12))]
        c = [rng.randrange(50000) for _ in range(rng.randint(0, 12))]
        r = [rng.randrange(50000) for _ in range(rng.randint(0, 12))]
        max_len = rng.randint(2, 30)
        out = nb.tokenize_comparison(p, c, r, max_len, eos_id=EOS, pad_id=7)
        rows = search_truncation(p, c, r, max_len)
        T = max(len(x) for x in rows)
        assert set(out) == {"input_ids", "attention_mask"}
        assert out["input_ids"].shape == (2, T) and out["input_ids"].dtype == torch.long
        assert out["attention_mask"].dtype == torch.long
        for b, row in enumerate(rows):
            assert out["input_ids"][b].tolist() == row + [7] * (T - len(row))  # right padding with pad_id
            assert out["attention_mask"][b].tolist() == [1] * len(row) + [0] * (T - len(row))
        last = out["attention_mask"].sum(-1) - 1
        if len(p) + max(len(c), len(r)) + 1 <= max_len:  # complete: the reward is read at the EOS
            assert out["input_ids"][torch.arange(2), last].tolist() == [EOS, EOS]


def test_tokenize_comparison_equals_tiktoken_of_the_whole_example(nb):
    from helpers import vocab

    enc = oracles.gpt2_tiktoken()
    world = World(0)
    rng = random.Random(5)
    for prompt in world.prompts("train")[:40]:
        a, b = world.sample_responses(prompt, 2, rng)
        out = nb.tokenize_comparison(enc.encode(format_prompt(prompt)), enc.encode(" " + a), enc.encode(" " + b), 1024)
        for row, response in enumerate((a, b)):
            n = int(out["attention_mask"][row].sum())
            assert out["input_ids"][row, :n].tolist() == enc.encode(format_example(prompt, response), allowed_special="all")


def test_collate_comparisons_pads_every_item_on_the_right(nb):
    rng = random.Random(6)
    items = [nb.tokenize_comparison([1] * rng.randint(1, 5), [2] * rng.randint(0, 6), [3] * rng.randint(0, 6), 64)
             for _ in range(5)]
    batch = nb.collate_comparisons(items, pad_id=0)
    T = max(i["input_ids"].shape[1] for i in items)
    assert batch["input_ids"].shape == (5, 2, T) and batch["attention_mask"].shape == (5, 2, T)
    for b, item in enumerate(items):
        t = item["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][b, :, :t], item["input_ids"])
        assert torch.equal(batch["attention_mask"][b, :, :t], item["attention_mask"])
        assert batch["attention_mask"][b, :, t:].sum() == 0


# ----------------------------------------------------------------------------- the pipeline


def test_collect_rankings_and_pairs(nb):
    from helpers.vocab import load_gpt2_ranks
    from minirlhf.tokenizer_gpt2 import encode

    ranks = load_gpt2_ranks()
    policy = tiny_gpt2(nb, vocab=50257, n_positions=64, n_embd=8)
    prompts = World(0).prompts("train")[:5]
    calls = []

    def reverse_labeler(prompt, responses):  # ranks the last response best: easy to check
        calls.append((prompt, list(responses)))
        return list(range(len(responses)))[::-1]

    rankings = nb.collect_rankings(policy, prompts, [encode(format_prompt(p), ranks) for p in prompts], reverse_labeler,
                                   ranks, k=3, max_new_tokens=4, chunk=2, generator=torch.Generator().manual_seed(0))
    assert [r["prompt"] for r in rankings] == [c[0] for c in calls]
    for r in rankings:
        assert len(r["responses"]) >= 2 and len({x.strip() for x in r["responses"]}) == len(r["responses"])
        assert r["ranking"] == list(range(len(r["responses"])))[::-1]
    pairs = nb.rankings_to_pair_records(rankings)
    assert len(pairs) == sum(math.comb(len(r["responses"]), 2) for r in rankings)
    first = rankings[0]
    k = len(first["responses"])
    assert pairs[0] == {"prompt": first["prompt"], "chosen": first["responses"][k - 1], "rejected": first["responses"][k - 2]}


def test_comparisons_artifact_with_a_stub_policy(nb, tmp_path, monkeypatch):
    """Build the "comparisons" artifact in a temporary cache (stub policy instead of the SFT model)."""
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLHF_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    from helpers import preference_pipeline as pp
    from helpers.datasets import read_pairs, read_rankings

    policy = tiny_gpt2(nb, vocab=50257, n_positions=64, n_embd=8, seed=1)
    monkeypatch.setattr(pp, "load_sft_model", lambda **kw: policy)
    data = pp.load_comparisons(tiny=True)
    folder = data["path"]
    assert folder.parent == tmp_path / "cache" / "artifacts"
    stats = data["stats"]
    train_prompts = set(World(0).prompts("train"))
    rk = data["rankings"]
    assert stats["n_rankings"] == len(rk["train"]) + len(rk["val"]) > 0
    assert not {r["prompt"] for r in rk["train"]} & {r["prompt"] for r in rk["val"]}
    assert {r["prompt"] for r in rk["train"] + rk["val"]} <= train_prompts
    for split in ("train", "val"):
        assert data[split] == read_pairs(folder / f"pairs_{split}.jsonl")
        assert rk[split] == read_rankings(folder / f"rankings_{split}.jsonl")
        assert len(data[split]) == sum(math.comb(len(r["responses"]), 2) for r in rk[split])
    # loading again reads the cached folder (no rebuild)
    monkeypatch.setattr(pp, "load_sft_model", lambda **kw: pytest.fail("the artifact was rebuilt"))
    assert pp.load_comparisons(tiny=True)["train"] == data["train"]


# ----------------------------------------------------------------------------- the test cells' bar
#
# The reference passes every test cell; each plausible wrong implementation fails the cell that grades its
# math; a correct implementation without any input checks loses only the validation cells (`*_errors`).


def test_reference_passes_every_test_cell(nb):
    assert failing(run_test_cells(NOTEBOOK, module=nb)) == {}


def _ids(seq) -> list[int]:
    return [int(t) for t in seq]


def _sampler_factory(*, side="left", tiled=False, per_sample_calls=False):
    from minirlhf.sft import pad_batch
    from minirlhf.tokenizer_gpt2 import generate

    def sample_k_responses(policy, prompt_ids, k, temperature=1.0, generator=None, *, max_new_tokens=48, eos_id=EOS):
        prompts = [torch.tensor(_ids(p), dtype=torch.long) for p in prompt_ids]
        N = len(prompts)
        if per_sample_calls:  # k generate calls, one sample of every prompt each
            ids, attn = pad_batch(prompts, eos_id, side=side)
            outs = [generate(policy, ids, attn, max_new_tokens, eos_id=eos_id, temperature=temperature, generator=generator)
                    for _ in range(k)]
            n = max(o[0].shape[1] for o in outs) - ids.shape[1]
            resp = torch.full((N, k, n), eos_id, dtype=torch.long)
            mask = torch.zeros(N, k, n, dtype=torch.long)
            for j, (tok, m) in enumerate(outs):
                w = tok.shape[1] - ids.shape[1]
                resp[:, j, :w], mask[:, j, :w] = tok[:, ids.shape[1]:], m.long()
            return resp, mask
        rows = [p for _ in range(k) for p in prompts] if tiled else [p for p in prompts for _ in range(k)]
        ids, attn = pad_batch(rows, eos_id, side=side)
        tokens, rmask = generate(policy, ids, attn, max_new_tokens, eos_id=eos_id, temperature=temperature,
                                 generator=generator)
        out = tokens[:, ids.shape[1]:]
        n = out.shape[1]
        return out.reshape(N, k, n), rmask.long().reshape(N, k, n)
    return sample_k_responses


def _dedupe_factory(*, strip=True, return_stripped=False, keep_last=False):
    def dedupe_responses(responses):
        order = list(enumerate(responses))
        first: dict[str, int] = {}
        for i, r in (reversed(order) if keep_last else order):
            first.setdefault(r.strip() if strip else r, i)
        kept = sorted(first.values())
        return [responses[i].strip() if return_stripped else responses[i] for i in kept], kept
    return dedupe_responses


def _pairs_factory(*, adjacent=False, swapped=False, positions=False, q_major=False):
    def ranking_to_pairs(ranking):
        r = _ids(ranking)
        K = len(r)
        pq = [(p, p + 1) for p in range(K - 1)] if adjacent else \
            sorted(itertools.combinations(range(K), 2), key=lambda x: (x[1], x[0]) if q_major else x)
        pairs = [(p, q) if positions else (r[p], r[q]) for p, q in pq]
        return [(b, a) for a, b in pairs] if swapped else pairs
    return ranking_to_pairs


def _bt_naive(r_a, r_b):
    return 1 / (1 + torch.exp(-(r_a - r_b)))


def _bt_swapped(r_a, r_b):
    return torch.sigmoid(r_b - r_a)


def _bt_softmax_of_exps(r_a, r_b):
    return torch.exp(r_a) / (torch.exp(r_a) + torch.exp(r_b))


def _agreement_positional(ranking_a, ranking_b):
    a, b = _ids(ranking_a), _ids(ranking_b)
    return sum(x == y for x, y in zip(a, b)) / len(a)


def _agreement_kendall_distance(ranking_a, ranking_b):
    a, b = _ids(ranking_a), _ids(ranking_b)
    agree = len(set(itertools.combinations(a, 2)) & set(itertools.combinations(b, 2)))
    return 1 - agree / math.comb(len(a), 2)


def _agreement_adjacent(ranking_a, ranking_b):
    a, b = _ids(ranking_a), _ids(ranking_b)
    pairs_b = set(itertools.combinations(b, 2))
    return sum((a[i], a[i + 1]) in pairs_b for i in range(len(a) - 1)) / (len(a) - 1)


def _split_factory(*, by_record=False, unsorted=False, floor=False, fixed_seed=False):
    def split_by_prompt(records, fractions, seed):
        rng = random.Random(0 if fixed_seed else seed)
        if by_record:
            order = list(range(len(records)))
            rng.shuffle(order)
            n, parts, start, c = len(order), [[] for _ in fractions], 0, 0.0
            for s, f in enumerate(fractions):
                c += f
                end = n if s == len(fractions) - 1 else round(n * c)
                for i in sorted(order[start:end]):
                    parts[s].append(records[i])
                start = max(start, end)
            return parts
        prompts = list(dict.fromkeys(r["prompt"] for r in records)) if unsorted else sorted({r["prompt"] for r in records})
        rng.shuffle(prompts)
        n, part_of, start, c = len(prompts), {}, 0, 0.0
        for s, f in enumerate(fractions):
            c += f
            end = n if s == len(fractions) - 1 else (int(n * c) if floor else round(n * c))
            for p in prompts[start:end]:
                part_of[p] = s
            start = max(start, end)
        parts = [[] for _ in fractions]
        for r in records:
            parts[part_of[r["prompt"]]].append(r)
        return parts
    return split_by_prompt


def _comparison_factory(*, each_row_alone=False, cut_prompt_right=False, side="right", eos=True):
    from minirlhf.sft import pad_batch

    def tokenize_comparison(prompt, chosen, rejected, max_len, *, eos_id=EOS, pad_id=EOS):
        p = _ids(prompt)
        tail = [int(eos_id)] if eos else []
        c, r = _ids(chosen) + tail, _ids(rejected) + tail
        n_c, n_r = min(len(c), max_len - 1), min(len(r), max_len - 1)
        keep = lambda n_p: p[:n_p] if cut_prompt_right else p[len(p) - n_p:]  # noqa: E731
        if each_row_alone:  # each row cuts its own prompt
            rows = [keep(min(len(p), max_len - n_c)) + c[:n_c], keep(min(len(p), max_len - n_r)) + r[:n_r]]
        else:
            shared = keep(min(len(p), max_len - max(n_c, n_r)))
            rows = [shared + c[:n_c], shared + r[:n_r]]
        ids, attn = pad_batch([torch.tensor(x, dtype=torch.long) for x in rows], pad_id, side=side)
        return {"input_ids": ids, "attention_mask": attn}
    return tokenize_comparison


def wrong_variants(nb):
    """(description, {name: wrong definition}, cell that must fail)."""
    return [
        ("prompts padded on the right", {"sample_k_responses": _sampler_factory(side="right")}, "test_sample_k_responses"),
        ("prompts tiled (row j N + i) instead of repeated in place",
         {"sample_k_responses": _sampler_factory(tiled=True)}, "test_sample_k_responses"),
        ("k generate calls instead of one", {"sample_k_responses": _sampler_factory(per_sample_calls=True)},
         "test_sample_k_responses"),
        ("identical only if equal before stripping", {"dedupe_responses": _dedupe_factory(strip=False)},
         "test_dedupe_responses"),
        ("returns the stripped texts", {"dedupe_responses": _dedupe_factory(return_stripped=True)}, "test_dedupe_responses"),
        ("keeps the last copy", {"dedupe_responses": _dedupe_factory(keep_last=True)}, "test_dedupe_responses"),
        ("adjacent pairs only", {"ranking_to_pairs": _pairs_factory(adjacent=True)}, "test_ranking_to_pairs"),
        ("(rejected, chosen)", {"ranking_to_pairs": _pairs_factory(swapped=True)}, "test_ranking_to_pairs"),
        ("pairs of positions, not of response indices", {"ranking_to_pairs": _pairs_factory(positions=True)},
         "test_ranking_to_pairs"),
        ("pairs ordered by the rejected position", {"ranking_to_pairs": _pairs_factory(q_major=True)},
         "test_ranking_to_pairs"),
        ("1 / (1 + exp(-x)): nan gradients far out", {"bradley_terry_probability": _bt_naive},
         "test_bradley_terry_probability"),
        ("sigma(r_b - r_a)", {"bradley_terry_probability": _bt_swapped}, "test_bradley_terry_probability"),
        ("exp(r_a) / (exp(r_a) + exp(r_b)): overflows", {"bradley_terry_probability": _bt_softmax_of_exps},
         "test_bradley_terry_probability"),
        ("share of equal positions", {"agreement_rate": _agreement_positional}, "test_agreement_rate"),
        ("Kendall distance instead of agreement", {"agreement_rate": _agreement_kendall_distance}, "test_agreement_rate"),
        ("adjacent pairs of the first ranking only", {"agreement_rate": _agreement_adjacent}, "test_agreement_rate"),
        ("records split, not prompts", {"split_by_prompt": _split_factory(by_record=True)}, "test_split_by_prompt"),
        ("prompts in order of appearance, not sorted", {"split_by_prompt": _split_factory(unsorted=True)},
         "test_split_by_prompt"),
        ("boundaries floored, not rounded", {"split_by_prompt": _split_factory(floor=True)}, "test_split_by_prompt"),
        ("the seed ignored", {"split_by_prompt": _split_factory(fixed_seed=True)}, "test_split_by_prompt"),
        ("each row cuts its own prompt", {"tokenize_comparison": _comparison_factory(each_row_alone=True)},
         "test_tokenize_comparison"),
        ("prompt cut from the right", {"tokenize_comparison": _comparison_factory(cut_prompt_right=True)},
         "test_tokenize_comparison"),
        ("left padding", {"tokenize_comparison": _comparison_factory(side="left")}, "test_tokenize_comparison"),
        ("no EOS after the responses", {"tokenize_comparison": _comparison_factory(eos=False)}, "test_tokenize_comparison"),
    ]


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    survivors = surviving_variants(NOTEBOOK, nb, wrong_variants(nb))
    assert not survivors, f"wrong implementations that still pass: {survivors}"


def test_correct_variants_pass_their_cells(nb):
    """The factories' defaults are correct implementations: the wrong variants differ from them in one idea."""
    correct = [("correct", {"sample_k_responses": _sampler_factory()}, "test_sample_k_responses"),
               ("correct", {"dedupe_responses": _dedupe_factory()}, "test_dedupe_responses"),
               ("correct", {"ranking_to_pairs": _pairs_factory()}, "test_ranking_to_pairs"),
               ("correct", {"split_by_prompt": _split_factory()}, "test_split_by_prompt"),
               ("correct", {"tokenize_comparison": _comparison_factory()}, "test_tokenize_comparison")]
    assert len(surviving_variants(NOTEBOOK, nb, correct)) == len(correct)


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every non-validation cell."""

    def agreement_rate(ranking_a, ranking_b):
        a, b = _ids(ranking_a), _ids(ranking_b)
        pairs_a, pairs_b = set(itertools.combinations(a, 2)), set(itertools.combinations(b, 2))
        return len(pairs_a & pairs_b) / len(pairs_a)

    replace = {"sample_k_responses": _sampler_factory(), "dedupe_responses": _dedupe_factory(),
               "ranking_to_pairs": _pairs_factory(), "bradley_terry_probability": lambda r_a, r_b: torch.sigmoid(r_a - r_b),
               "agreement_rate": agreement_rate, "split_by_prompt": _split_factory(),
               "tokenize_comparison": _comparison_factory()}
    failed = failing(run_test_cells(NOTEBOOK, replace, module=nb))
    assert failed, "the validation cells must notice the missing checks"
    assert all(cell.endswith("_errors") for cell in failed), failed
    assert sorted(failed) == sorted(f"test_{name}_errors" for name in replace
                                    if name not in ("dedupe_responses", "bradley_terry_probability")), failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []
