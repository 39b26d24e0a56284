"""The embedded instruction world: determinism, prompts and splits, gold, labelers, language size.

Oracles are computed here, independently of helpers.world: real-world leg counts, our own word
and trigram counts, our own two-labeler agreement loop and Monte-Carlo frequencies compared with
the Bradley-Terry / Plackett-Luce formulas.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import world as W

ROOT = Path(__file__).resolve().parent.parent
WORD = re.compile(r"[a-z0-9]+")
FLATTER = {"wonderful", "amazing", "lovely", "great", "fantastic", "brilliant", "perfect", "delightful"}
REAL_LEGS = {"spider": "eight", "bee": "six", "ant": "six", "duck": "two", "owl": "two",
             "snake": "no", "cat": "four", "horse": "four"}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@pytest.fixture(scope="module")
def world() -> W.World:
    return W.World(seed=0)


@pytest.fixture(scope="module")
def demos(world):
    return world.demonstrations("train", per_prompt=3)


def fingerprint(w: W.World) -> str:
    blob = {
        "prompts": w.prompts(),
        "splits": {s: w.prompts(s) for s in W.SPLITS},
        "facts": w.fact_table(),
        "demos": [w.demonstrations(s) for s in W.SPLITS],
        "pretrain": w.pretraining_corpus(50, seed=3),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_world_across_processes(world):
    here = fingerprint(world)
    assert fingerprint(W.World(seed=0)) == here
    code = ("import sys; sys.path.insert(0, %r); from helpers import world as W; "
            "import tests.test_world as t; print(t.fingerprint(W.build_world(0)))") % str(ROOT)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here, "World(0) differs in a process with another PYTHONHASHSEED"


def test_different_seed_different_world(world):
    other = W.World(seed=1)
    assert other.fact_table() != world.fact_table()
    assert set(other.prompts()) != set(world.prompts())
    assert other.prompts("test") != world.prompts("test")
    assert other.demonstrations("val") != world.demonstrations("val")
    assert fingerprint(other) != fingerprint(world)


# ----------------------------------------------------------------------------- prompts, splits, format


def test_prompts_many_families_short_ascii(world):
    prompts = world.prompts()
    assert len(prompts) == len(set(prompts)) >= 500
    fams = Counter(world.info(p).family for p in prompts)
    assert len(fams) >= 5 and min(fams.values()) >= 50, fams
    for p in prompts:
        assert p.isascii() and p == p.strip(), p
        assert 2 <= len(words(p)) <= 20, p


def test_splits_disjoint_covering_stratified(world):
    parts = {s: world.prompts(s) for s in ("train", "val", "test")}
    sets = {s: set(v) for s, v in parts.items()}
    assert sets["train"].isdisjoint(sets["val"]) and sets["train"].isdisjoint(sets["test"])
    assert sets["val"].isdisjoint(sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(world.prompts())
    n = len(world.prompts())
    assert abs(len(parts["train"]) / n - 0.8) < 0.02 and abs(len(parts["test"]) / n - 0.1) < 0.02
    for s, ps in parts.items():
        assert {world.info(p).family for p in ps} == set(W.FAMILIES), s
        assert all(world.split_of(p) == s for p in ps)
        assert {d["prompt"] for d in world.demonstrations(s)} == sets[s]
    with pytest.raises(ValueError):
        world.prompts("dev")


def test_format_constants():
    assert W.format_prompt("describe the fox.") == "Instruction: describe the fox.\nResponse:"
    assert W.format_prompt("x").endswith(W.RESPONSE_SEPARATOR)
    full = W.format_example("describe the fox.", "the fox is red.")
    assert full == "Instruction: describe the fox.\nResponse: the fox is red.<|endoftext|>"
    assert full.split(W.RESPONSE_SEPARATOR, 1)[1] == W.format_response("the fox is red.")


def test_gold_accepts_formatted_prompt_and_rejects_unknown(world):
    p = "describe the fox."
    r = world.good_response(p)
    assert world.gold_score(W.format_prompt(p), " " + r) == world.gold_score(p, r)
    assert world.has_prompt(W.format_prompt(p)) and not world.has_prompt("describe the unicorn.")
    with pytest.raises(KeyError, match="unicorn"):
        world.gold_score("describe the unicorn.", "it is white.")


# ----------------------------------------------------------------------------- facts and gold


def test_fact_table_true_legs_and_good_responses(world):
    table = world.fact_table()
    for animal, legs in REAL_LEGS.items():
        assert table[animal]["legs"] == legs, animal
    for p in world.prompts():
        info = world.info(p)
        good = world.good_response(p)
        c = world.gold_components(p, good)
        assert math.isclose(world.gold_score(p, good), sum(c.values()), abs_tol=1e-12)
        assert c["topic"] == 1.0 and c["repetition"] == 0.0 and c["concise"] == 0.0 and c["ending"] > 0, (p, good, c)
        assert c["factual"] >= 0 and c["flattery"] == 0, (p, good, c)
        if info.attribute is not None:
            assert table[info.entity][info.attribute] in words(good), (p, good)


def test_gold_right_fact_beats_wrong_fact(world):
    for animal, legs in REAL_LEGS.items():
        p = f"how many legs does the {animal} have?"
        wrong = "six" if legs != "six" else "four"
        right_r, wrong_r = f"the {animal} has {legs} legs.", f"the {animal} has {wrong} legs."
        assert world.gold_score(p, right_r) > world.gold_score(p, wrong_r) + 1.0, animal
        assert world.gold_components(p, wrong_r)["factual"] < 0 < world.gold_components(p, right_r)["factual"]
    table = world.fact_table()
    p = "what colour is the fox?"
    true = table["fox"]["colour"]
    other = next(c for c in ("red", "blue", "green") if c != true)
    assert world.gold_score(p, f"the fox is {true}.") > world.gold_score(p, f"the fox is {other}.")
    # an unanswered question sits between the right and the wrong answer
    silent = world.gold_score(p, "the fox is an animal.")
    assert world.gold_score(p, f"the fox is {other}.") < silent < world.gold_score(p, f"the fox is {true}.")
    # reminders: the wrong day is a factual error
    p = next(q for q in world.prompts() if world.info(q).task == "note_reminder")
    day = p.rstrip(".").split()[-1]
    bad_day = "monday" if day != "monday" else "friday"
    good = world.good_response(p)
    assert world.gold_score(p, good.replace(day, bad_day)) < world.gold_score(p, good) - 0.5


def test_gold_topic_politeness_ending_length(world):
    p = "describe the fox."
    f = world.fact_table()["fox"]
    base = f"the fox is {f['colour']}. it lives in the {f['home']}."
    g = world.gold_score
    assert g(p, base) > g(p, base.replace("fox", "owl"))  # about another animal
    assert g(p, base) > g(p, base + " my friend anna has a cup.")  # off-topic entities
    assert 0 < g(p, base + " i hope this helps.") - g(p, base) <= 0.5  # a little politeness helps
    assert g(p, base + " please please please please.") < g(p, base)  # too much does not
    assert g(p, base[:-1]) < g(p, base)  # missing ending
    ramble = base + " there is so much more to say about this, and i could keep on going for a long time about it, but i will stop."
    assert len(words(ramble)) > 30
    assert world.gold_components(p, ramble)["concise"] < 0 == world.gold_components(p, base)["concise"]
    assert g(p, ramble) < g(p, base)
    assert g(p, "fox.") < g(p, base)  # far too short
    assert g(p, base + "<|endoftext|> the owl the owl the owl") == g(p, base)  # text after EOT ignored


def test_gold_punishes_repetition(world):
    p = "describe the fox."
    f = world.fact_table()["fox"]
    base = f"the fox is {f['colour']}. it eats {f['food']}."
    w = words(base)
    tri = Counter(zip(w, w[1:], w[2:]))
    assert max(tri.values()) == 1  # our own check: no repeated trigram
    assert world.gold_components(p, base)["repetition"] == 0
    twice = base + " " + base
    assert world.gold_components(p, twice)["repetition"] < 0
    assert world.gold_score(p, twice) < world.gold_score(p, base)
    stutter = f"the fox fox fox is {f['colour']}. it eats {f['food']}."
    assert world.gold_score(p, stutter) < world.gold_score(p, base)


def test_flattery_one_liked_many_punished(world):
    note = next(q for q in world.prompts() if world.info(q).task == "note_thanks")
    for p in ("describe the fox.", "what colour is the cup?", note):
        good = world.good_response(p)
        one = world.exploit_response(p, 1)
        assert sum(x in FLATTER for x in words(one)) == 1
        c1 = world.gold_components(p, one)["flattery"]
        assert 0 < c1 <= 1.0, c1
        assert world.gold_score(p, good) < world.gold_score(p, one) <= world.gold_score(p, good) + 1.0
        two = world.exploit_response(p, 2)  # two different words: liked a little more than one
        assert world.gold_score(p, one) < world.gold_score(p, two)
        hack = world.exploit_response(p, 6)
        assert sum(x in FLATTER for x in words(hack)) == 6
        assert world.gold_components(p, hack)["flattery"] < -1
        assert world.gold_score(p, hack) < world.gold_score(p, good) - 1
        scores = [world.gold_score(p, world.exploit_response(p, n)) for n in range(1, 8)]
        assert all(a > b for a, b in zip(scores[1:], scores[2:])), scores  # 2 onwards: more is worse
    p = "describe the fox."
    base = world.good_response(p)
    repeat = "what a lovely lovely question! " + base
    assert world.gold_components(p, repeat)["flattery"] < 0  # a repeated word is punished


# ----------------------------------------------------------------------------- demonstrations


def test_demonstrations_uneven_quality(world, demos):
    assert all(set(d) == {"prompt", "response"} for d in demos)
    gold = [world.gold_score(d["prompt"], d["response"]) for d in demos]
    med = statistics.median(gold)
    assert statistics.pstdev(gold) > 0.6
    assert sum(g < med - 1.0 for g in gold) / len(gold) > 0.1
    comps = [world.gold_components(d["prompt"], d["response"]) for d in demos]
    share = lambda key, cond: sum(cond(c[key]) for c in comps) / len(comps)  # noqa: E731
    for key, full in (("factual", 0), ("topic", 1), ("concise", 0), ("ending", 0), ("repetition", 0)):
        bad = share(key, lambda v: v < full)
        assert 0.02 < bad < 0.35, (key, bad)
    # flattery: 0, 1 or 2 (different) enthusiastic words, common enough to be learned
    counts = [sum(x in FLATTER for x in words(d["response"])) for d in demos]
    assert max(counts) == 2 and 0.1 < sum(c > 0 for c in counts) / len(counts) < 0.5
    assert 0.02 < sum(c == 2 for c in counts) / len(counts) < 0.15
    assert all(len(set(ws)) == len(ws) for ws in ([x for x in words(d["response"]) if x in FLATTER] for d in demos))
    # lengths: most demonstrations are 8-30 words
    n = [len(words(d["response"])) for d in demos]
    assert sum(4 <= k <= 30 for k in n) / len(n) > 0.8
    assert 8 <= statistics.median(n) <= 30


def test_demonstrations_deterministic_per_prompt(world):
    a = world.demonstrations("val", per_prompt=2)
    b = W.World(0).demonstrations("val", per_prompt=2)
    assert a == b and len(a) == 2 * len(world.prompts("val"))
    assert a[: len(a) // 2] == world.demonstrations("val")  # per_prompt=2 extends per_prompt=1


# ----------------------------------------------------------------------------- labelers


def test_rank_responses_is_plackett_luce(world):
    p = "how many legs does the spider have?"
    rs = ["the spider has eight legs.", "the spider has six legs", "the spider has eight legs. i hope this helps.",
          "spider."]
    g = [world.gold_score(p, r) for r in rs]
    rng = random.Random(7)
    tau = 0.8
    firsts = Counter()
    n = 6000
    for _ in range(n):
        rk = world.rank_responses(p, rs, rng, tau)
        assert sorted(rk) == [0, 1, 2, 3]
        firsts[rk[0]] += 1
    z = sum(math.exp(x / tau) for x in g)
    for i in range(4):
        expect = math.exp(g[i] / tau) / z
        assert abs(firsts[i] / n - expect) < 4 * math.sqrt(expect * (1 - expect) / n) + 1e-3, (i, firsts, expect)
    # two items: Bradley-Terry, P(a > b) = sigmoid((g_a - g_b) / tau)
    a, b = rs[0], rs[3]
    wins = sum(world.rank_responses(p, [a, b], rng, tau)[0] == 0 for _ in range(n))
    expect = 1 / (1 + math.exp(-(g[0] - g[3]) / tau))
    assert abs(wins / n - expect) < 4 * math.sqrt(expect * (1 - expect) / n) + 1e-3
    assert world.rank_responses(p, rs, rng, 0.0) == sorted(range(4), key=lambda i: -g[i])


def test_default_noise_gives_instructgpt_agreement(world):
    """Own loop: pairs of two demonstrations of one prompt, two independent simulated labelers."""
    many = world.demonstrations("train", per_prompt=8)
    by_prompt: dict[str, list[str]] = {}
    for d in many:
        by_prompt.setdefault(d["prompt"], []).append(d["response"])
    pairs = [(p, rs[i], rs[i + 1]) for p, rs in by_prompt.items() for i in range(0, 8, 2)][:2000]
    assert len(pairs) == 2000
    rng_a, rng_b = random.Random(101), random.Random(202)
    agree = 0
    for p, a, b in pairs:
        first_a = world.rank_responses(p, [a, b], rng_a, W.DEFAULT_LABELER_NOISE)[0]
        first_b = world.rank_responses(p, [a, b], rng_b, W.DEFAULT_LABELER_NOISE)[0]
        agree += first_a == first_b
    rate = agree / len(pairs)
    print(f"agreement of two labelers at tau={W.DEFAULT_LABELER_NOISE}: {rate:.3f}")
    assert 0.70 <= rate <= 0.76, rate
    # the library's own estimate agrees, and noise moves agreement the right way
    assert 0.70 <= W.labeler_agreement(W.DEFAULT_LABELER_NOISE, 2000, 0, world=world) <= 0.76
    assert world.labeler_agreement(0.1, 500, 1) > world.labeler_agreement(3.0, 500, 1)


def test_calibration_reproduces_default(world):
    tau = W.calibrate_labeler_noise(0.73, n_pairs=1500, seed=0, world=world)
    assert abs(tau - W.DEFAULT_LABELER_NOISE) < 0.08, tau


# ----------------------------------------------------------------------------- language size


def test_language_is_small(world):
    texts = list(world.prompts())
    for s in W.SPLITS:
        texts += [d["response"] for d in world.demonstrations(s)]
    corpus = world.pretraining_corpus(2000, seed=0)
    assert len(corpus) == 2000 and corpus == world.pretraining_corpus(2000, seed=0)
    assert corpus != world.pretraining_corpus(2000, seed=1)
    texts += corpus
    assert all(t.isascii() for t in texts)
    vocab = {x for t in texts for x in words(t)}
    print(f"distinct words: {len(vocab)}")
    assert 150 <= len(vocab) <= 500, len(vocab)
    # every word of a fresh seed's text is also in this bound (the language does not grow with the seed)
    other = W.World(5)
    vocab5 = {x for p in other.prompts() for x in words(p)} | {
        x for d in other.demonstrations("train") for x in words(d["response"])}
    assert len(vocab | vocab5) <= 500
    # pretraining texts are short and carry every fact of the world
    lens = [len(words(t)) for t in corpus]
    assert max(lens) <= 60 and statistics.mean(lens) < 30
    joined = " ".join(corpus)
    assert sum(s in joined for s in world.fact_sentences()) / len(world.fact_sentences()) > 0.95
    assert any(sum(x in FLATTER for x in words(t)) >= 2 for t in corpus)


def test_distinct_gpt2_tokens_small(world):
    tiktoken = pytest.importorskip("tiktoken")
    from helpers.vocab import EOT_ID, EOT_TOKEN, load_gpt2_ranks

    enc = tiktoken.Encoding(
        name="gpt2_course",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=load_gpt2_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
    )
    texts = [W.format_example(d["prompt"], d["response"]) for s in W.SPLITS for d in world.demonstrations(s)]
    texts += world.pretraining_corpus(2000, seed=0)
    ids = set()
    longest = 0
    for t in texts:
        toks = enc.encode(t, allowed_special={EOT_TOKEN})
        ids.update(toks)
        longest = max(longest, len(toks))
    print(f"distinct GPT-2 tokens: {len(ids)}, longest example: {longest} tokens")
    assert EOT_ID in ids
    assert len(ids) <= 700, len(ids)
    assert longest <= 128
