"""Train the default model (helpers.default_model) and measure what the course relies on.

Trains the DEFAULT recipe from scratch (not the artifact cache) and prints:

* wall-clock and process CPU time of the training, torch threads, load average;
* final training loss: the sampled-softmax loss it optimised (mean of the last 20 steps) and the
  exact full-softmax loss on 32 training rows;
* validation perplexity (exact, full 50,257-way softmax) on held-out world text: fresh
  pretraining texts, and val prompts' demonstrations (whole example / response tokens only);
* mean gold score (helpers.world.gold_score) of responses to every val prompt, greedy and at
  temperature 0.7 (two samples per prompt), next to references: the labelers' demonstrations,
  the base model's noisy training pool, and World.good_response;
* the fraction of samples that end with <|endoftext|> within 64 new tokens, and that hold only
  words of the world;
* the probability mass the model puts outside the world's tokens (full softmax), on the
  generated positions and on the val demonstrations' response positions.

    .venv/bin/python benchmarks/default_model.py [--threads 2] [--tiny] [--save PATH] [--set steps=300 ...]

``--set key=value`` overrides a training hyper-parameter (DEFAULT_TRAINING keys, or n_layer /
n_embd / n_head) for experiments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.default_model import (  # noqa: E402
    DEFAULT_CONFIG,
    DEFAULT_TRAINING,
    TINY_CONFIG,
    TINY_TRAINING,
    save_model,
    train_default_model,
    training_documents,
)
from helpers.vocab import EOT_ID, load_gpt2_ranks  # noqa: E402
from helpers.world import EOT_TOKEN, SPLITS, World, format_example, format_prompt, words_of  # noqa: E402
from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config, decode, encode, generate  # noqa: E402

MAX_NEW = 64


def world_tokens(world: World, ranks: dict[bytes, int]) -> torch.Tensor:
    """Bool [V]: every token of the world's text (prompts, demonstrations, pretraining texts)."""
    ids = {EOT_ID}
    for split in SPLITS:
        for d in world.demonstrations(split, per_prompt=2):
            ids.update(encode(format_example(d["prompt"], d["response"]), ranks))
    for text in world.pretraining_corpus(3000, seed=1):
        ids.update(encode(text, ranks))
    mask = torch.zeros(50257, dtype=torch.bool)
    mask[torch.tensor(sorted(ids))] = True
    return mask


@torch.no_grad()
def exact_loss(model: GPT2, rows: list[list[int]], only_after: list[int] | None = None) -> float:
    """Mean full-softmax next-token loss over ``rows`` (targets from index ``only_after[i]`` on)."""
    total, count = 0.0, 0
    for i, row in enumerate(rows):
        ids = torch.tensor([row])
        logits = model(ids)[0, :-1]
        targets = ids[0, 1:]
        start = max(0, (only_after[i] if only_after else 1) - 1)
        total += float(F.cross_entropy(logits[start:], targets[start:], reduction="sum"))
        count += len(targets) - start
    return total / count


@torch.no_grad()
def sample(model: GPT2, prompts: list[str], ranks, temperature: float, seed: int) -> tuple[list[str], list[bool], torch.Tensor, torch.Tensor, int]:
    """Responses (decoded up to EOT), whether each ended with EOT, and the mean probability mass
    outside the world's tokens at the generated positions (full softmax at temperature 1)."""
    enc = [encode(format_prompt(p), ranks) for p in prompts]
    T = max(len(e) for e in enc)
    ids = torch.full((len(enc), T), EOT_ID, dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, T - len(e):] = torch.tensor(e)
        mask[i, T - len(e):] = 1
    g = torch.Generator().manual_seed(seed)
    tokens, rmask = generate(model, ids, mask, MAX_NEW, eos_id=EOT_ID, temperature=temperature, generator=g)
    texts, ended = [], []
    for i in range(len(enc)):
        new = tokens[i, T:][rmask[i].bool()].tolist()
        ended.append(EOT_ID in new)
        texts.append(decode([t for t in new if t != EOT_ID], ranks))
    return texts, ended, tokens, torch.cat([mask, rmask], 1), T


@torch.no_grad()
def outside_mass(model: GPT2, tokens: torch.Tensor, mask: torch.Tensor, start: int, in_world: torch.Tensor) -> float:
    """Mean over positions ``>= start - 1`` that predict a real token of P(next token not in the world)."""
    probs = torch.softmax(model(tokens, attention_mask=mask)[:, start - 1:-1], dim=-1)
    out = probs[..., ~in_world].sum(-1)
    m = mask[:, start:].bool()
    return float(out[m].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="the grading-size recipe instead")
    parser.add_argument("--save", type=Path, default=None,
                        help="also save the model (model.safetensors, config.json, training.json) into this folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TINY_CONFIG if args.tiny else DEFAULT_CONFIG
    training = dict(TINY_TRAINING if args.tiny else DEFAULT_TRAINING)
    for item in args.set:
        k, v = item.split("=", 1)
        if k in ("n_layer", "n_embd", "n_head", "n_positions"):
            config = GPT2Config(**{**asdict(config), k: int(v)})
        elif k in training:
            training[k] = type(training[k])(v)
        else:
            raise SystemExit(f"unknown key {k!r}")
    print(f"config   {config}")
    print(f"training {training}")

    ranks = load_gpt2_ranks()
    load0 = os.getloadavg()[0]
    wall, cpu = time.time(), time.process_time()
    model, log = train_default_model(config, progress=True, **training)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    print(f"\ntraining: wall {wall:.1f} s, process CPU {cpu:.1f} s, torch threads {torch.get_num_threads()}, "
          f"load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f}")
    if args.save:
        save_model(model, args.save)
        (args.save / "training.json").write_text(json.dumps(log) + "\n")

    world = World(training["world_seed"])
    in_world = world_tokens(world, ranks)
    print(f"world tokens: {int(in_world.sum())} of 50257")

    docs = training_documents(world, 200, 1, training["seed"])
    train_rows = [encode(t + EOT_TOKEN, ranks) for t in docs["pretrain"][:16]] + \
                 [encode(t, ranks) for t in docs["instruct"][:16]]
    L = log["loss"]
    print(f"train loss: sampled-softmax last 20 steps {statistics.mean(L[-20:]):.3f} (first step {L[0]:.3f}); "
          f"exact on 32 training texts {exact_loss(model, train_rows):.3f}")

    val_pre = [encode(t + EOT_TOKEN, ranks) for t in world.pretraining_corpus(200, seed=123_456)]
    val_demos = world.demonstrations("val")
    val_ex = [encode(format_example(d["prompt"], d["response"]), ranks) for d in val_demos]
    prompt_len = [len(encode(format_prompt(d["prompt"]), ranks)) for d in val_demos]
    lp, le, lr = exact_loss(model, val_pre), exact_loss(model, val_ex), exact_loss(model, val_ex, prompt_len)
    print(f"val perplexity (full softmax): pretraining texts {torch.tensor(lp).exp():.2f}, "
          f"val examples {torch.tensor(le).exp():.2f}, their response tokens {torch.tensor(lr).exp():.2f}")
    if log.get("val_loss"):
        print(f"  (training log's held-out loss: {log['val_loss'][-1]:.3f})")

    prompts = world.prompts("val")
    refs = {
        "labelers' demonstrations": statistics.mean(world.gold_score(d["prompt"], d["response"]) for d in val_demos),
        "noisy pool (base data)": statistics.mean(
            world.gold_score(p, t.split("\nResponse:", 1)[1]) for p, t in
            zip(world.prompts("train"), training_documents(world, 0, 1, 0)["instruct"])),
        "World.good_response": statistics.mean(world.gold_score(p, world.good_response(p)) for p in prompts),
    }
    vocab = world.vocabulary()
    print(f"\ngold score on {len(prompts)} val prompts (references: "
          + ", ".join(f"{k} {v:.2f}" for k, v in refs.items()) + ")")
    for name, temp, reps in (("greedy", 0.0, 1), ("T=0.7", 0.7, 2), ("T=1.0", 1.0, 1)):
        ps = prompts * reps
        t0 = time.time()
        texts, ended, tokens, mask, start = sample(model, ps, ranks, temp, seed=1)
        gen_s = time.time() - t0
        gold = [world.gold_score(p, t) for p, t in zip(ps, texts)]
        in_vocab = [bool(words_of(t)) and all(w in vocab for w in words_of(t)) for t in texts]
        mass = outside_mass(model, tokens, mask, start, in_world)
        print(f"  {name:7s} gold {statistics.mean(gold):+.3f}  ended with EOT {statistics.mean(ended):.2f}  "
              f"only world words {statistics.mean(in_vocab):.2f}  P(outside world) {mass:.2e}  "
              f"({len(ps)} samples, {gen_s:.1f} s)")
        for p, t in list(zip(ps, texts))[:3]:
            print(f"      {p!r} -> {t!r}")

    # probability mass outside the world on the val demonstrations' response positions
    rows = val_ex
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), EOT_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    with torch.no_grad():
        probs = torch.softmax(model(ids)[:, :-1], dim=-1)[..., ~in_world].sum(-1)
    keep = torch.zeros_like(mask[:, 1:], dtype=torch.bool)
    for i, n in enumerate(prompt_len):
        keep[i, n - 1:len(rows[i]) - 1] = True
    print(f"P(outside world) on val demonstrations' response positions: mean {float(probs[keep].mean()):.2e}, "
          f"max {float(probs[keep].max()):.2e}")


if __name__ == "__main__":
    main()
