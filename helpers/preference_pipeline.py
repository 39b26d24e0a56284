"""The course's comparison data set, collected once with notebook 03's reference code and cached.

Notebook 04 (reward model) trains on comparisons of SFT samples ranked by the simulated labelers.
Collecting them means sampling ``K`` responses for every training prompt -- minutes on a CPU -- so
this module builds the data set with the **reference code exported from notebook 03**
(``minirlhf.preference_data``: ``collect_rankings`` and through it ``sample_k_responses``,
``dedupe_responses``; ``split_by_prompt``; ``rankings_to_pair_records`` and through it
``ranking_to_pairs``) -- nothing here re-implements them -- and caches it as the artifact
``"comparisons"`` (:mod:`helpers.artifacts`)::

    from helpers.preference_pipeline import load_comparisons
    data = load_comparisons()          # tiny under grading, like load_sft_model()
    data["train"], data["val"]         # [{"prompt", "chosen", "rejected"}], a prompt's pairs together

Recipe (the same as notebook 03's demo, on all training prompts): the SFT model
(:func:`helpers.sft_pipeline.load_sft_model`, same ``tiny``/``seed``/``world_seed``) samples
``ComparisonConfig.k`` responses per *train* prompt of ``World(world_seed)`` (prompt text
:func:`helpers.world.format_prompt`, GPT-2 BPE), one ``torch.Generator`` seeded with
``config.seed``; duplicates are dropped; :func:`helpers.labeling.simulated_labeler` (noise
:data:`helpers.world.DEFAULT_LABELER_NOISE`, labeler seed ``seed``) ranks the rest; prompts with fewer
than 2 distinct responses are skipped. ``split_by_prompt`` divides the rankings into reward-model
``train`` / ``val`` parts (``1 - val_fraction`` / ``val_fraction`` of the prompts); the world's
val and test prompts are never used (they stay unseen for PPO evaluation).

Files of the artifact: ``rankings_train.jsonl``, ``rankings_val.jsonl``, ``pairs_train.jsonl``,
``pairs_val.jsonl`` (formats of :mod:`helpers.datasets`) and ``stats.json`` (counts, timings, the
config, and how often the labeler agreed with gold).

Because this module imports ``minirlhf.preference_data``, it works wherever notebook 03's reference
code is available (the source tree, and releases of notebooks 04 and later) -- not in notebook 03's
own student release, which is why notebook 03 collects its data in demo cells instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from helpers import artifacts
from helpers.datasets import read_pairs, read_rankings, write_jsonl
from helpers.labeling import simulated_labeler
from helpers.runtime import is_grading
from helpers.runtime import progress as _progress_bar
from helpers.sft_pipeline import load_sft_model
from helpers.vocab import load_gpt2_ranks
from helpers.world import DEFAULT_LABELER_NOISE, World, format_prompt
from minirlhf.preference_data import (
    TINY_COMPARISON_CONFIG,
    ComparisonConfig,
    collect_rankings,
    ranking_to_pairs,
    rankings_to_pair_records,
    split_by_prompt,
)
from minirlhf.tokenizer_gpt2 import GPT2, encode

__all__ = [
    "FILES",
    "STATS_FILE",
    "build_comparisons",
    "comparison_config",
    "comparisons_path",
    "load_comparisons",
]

FILES = ("rankings_train", "rankings_val", "pairs_train", "pairs_val")
STATS_FILE = "stats.json"


def comparison_config(tiny: bool) -> ComparisonConfig:
    """The recipe's :class:`minirlhf.preference_data.ComparisonConfig`: every train prompt, or the grading-size one."""
    return TINY_COMPARISON_CONFIG if tiny else ComparisonConfig()


def _gold_agreement(world: World, rankings: list[dict[str, Any]]) -> float | None:
    """Fraction of ranked pairs with different gold scores where the labeler's winner has the higher gold."""
    right = total = 0
    for r in rankings:
        gold = [world.gold_score(r["prompt"], t) for t in r["responses"]]
        for chosen, rejected in ranking_to_pairs(r["ranking"]):
            delta = gold[chosen] - gold[rejected]
            if delta != 0:
                total += 1
                right += delta > 0
    return right / total if total else None


def build_comparisons(
    tiny: bool = False, *, seed: int = 0, world_seed: int = 0, policy: GPT2 | None = None,
    noise: float = DEFAULT_LABELER_NOISE, progress: bool = True,
) -> dict[str, Any]:
    """Collect the data set now; returns ``{"rankings_train", "rankings_val", "pairs_train", "pairs_val", "stats"}``.

    ``policy`` defaults to ``load_sft_model(tiny, seed=seed, world_seed=world_seed)``. Deterministic in
    ``(tiny, seed, world_seed)`` for a given policy on a given machine. Torch's global RNG is untouched.
    """
    config = dataclasses.replace(comparison_config(tiny), seed=seed)
    world = World(world_seed)
    prompts = world.prompts("train")
    if config.n_prompts is not None:
        prompts = prompts[: config.n_prompts]
    policy = load_sft_model(tiny=tiny, seed=seed, world_seed=world_seed) if policy is None else policy
    ranks = load_gpt2_ranks()
    start = time.time()
    rankings = collect_rankings(
        policy, prompts, [encode(format_prompt(p), ranks) for p in prompts], simulated_labeler(world, noise, seed),
        ranks, k=config.k, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
        chunk=config.chunk, generator=torch.Generator(device=next(policy.parameters()).device).manual_seed(config.seed),
        progress=lambda starts: _progress_bar(starts, desc="sampling comparisons", unit="chunk", disable=not progress),
    )
    seconds = time.time() - start
    train, val = split_by_prompt(rankings, (1.0 - config.val_fraction, config.val_fraction), config.seed)
    out: dict[str, Any] = {
        "rankings_train": train,
        "rankings_val": val,
        "pairs_train": rankings_to_pair_records(train),
        "pairs_val": rankings_to_pair_records(val),
    }
    out["stats"] = {
        "config": dataclasses.asdict(config),
        "noise": noise,
        "n_prompts": len(prompts),
        "n_rankings": len(rankings),
        "n_skipped_prompts": len(prompts) - len(rankings),
        "counts": {name: len(out[name]) for name in FILES},
        "labeler_gold_agreement": _gold_agreement(world, rankings),
        "sampling_seconds": seconds,
    }
    return out


# ----------------------------------------------------------------------------- artifact


def _build(out_dir: Path, *, tiny: bool, seed: int, world_seed: int) -> None:
    data = build_comparisons(tiny, seed=seed, world_seed=world_seed)
    for name in FILES:
        write_jsonl(out_dir / f"{name}.jsonl", data[name])
    (out_dir / STATS_FILE).write_text(json.dumps(data["stats"], indent=2) + "\n", encoding="utf-8")


def _load(folder: Path, *, tiny: bool, seed: int, world_seed: int) -> dict[str, Any]:
    rankings = {split: read_rankings(folder / f"rankings_{split}.jsonl") for split in ("train", "val")}
    pairs = {split: read_pairs(folder / f"pairs_{split}.jsonl") for split in ("train", "val")}
    stats = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
    return {"train": pairs["train"], "val": pairs["val"], "rankings": rankings, "stats": stats, "path": folder}


def register_artifacts() -> None:
    """Register the "comparisons" artifact (again, if a test swapped the registry)."""
    artifacts.register(
        "comparisons", _build, _load,
        depends_on=["helpers/preference_pipeline.py", "helpers/labeling.py", "helpers/world.py", "helpers/datasets.py",
                    "helpers/vocab.py", "minirlhf.preference_data", "minirlhf.tokenizer_gpt2", "artifact:sft_model"],
        defaults={"tiny": False, "seed": 0, "world_seed": 0},
    )


register_artifacts()


def load_comparisons(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> dict[str, Any]:
    """The comparison data set, from the artifact cache or collected now (minutes; the tiny one in seconds).

    Returns ``{"train": pairs, "val": pairs, "rankings": {"train": [...], "val": [...]}, "stats": {...},
    "path": folder}``: pairs are ``{"prompt", "chosen", "rejected"}`` dicts, the pairs of one ranking next to
    each other (in :func:`minirlhf.preference_data.ranking_to_pairs` order); rankings are
    ``{"prompt", "responses", "ranking"}`` (best first). ``tiny`` defaults to ``helpers.runtime.is_grading()``.
    """
    if tiny is None:
        tiny = is_grading()
    return artifacts.get("comparisons", tiny=bool(tiny), seed=seed, world_seed=world_seed)


def comparisons_path(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> Path:
    """The artifact's folder (built first if needed): the JSONL files and ``stats.json``."""
    if tiny is None:
        tiny = is_grading()
    return artifacts.path("comparisons", tiny=bool(tiny), seed=seed, world_seed=world_seed)
