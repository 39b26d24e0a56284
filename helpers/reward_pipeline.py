"""The course's reward model, trained once with notebook 04's reference code and cached.

Notebooks 05-08 need a trained reward model (PPO maximises it) and its normalisation. Training it
takes a couple of minutes on a CPU, so this module builds it with the **reference code exported from
notebook 04** (``minirlhf.reward_model``: ``RewardModel.from_policy``, ``train_reward_model`` and
through it ``reward_model_step``, ``score_texts``, ``fit_reward_normalization``) -- nothing here
re-implements them -- and caches it as the artifact ``"reward_model"`` (:mod:`helpers.artifacts`)::

    from helpers.reward_pipeline import load_reward_model, reward_normalization
    rm = load_reward_model()                 # a RewardModel in eval mode; tiny under grading
    gain, bias = reward_normalization()      # gain * rm(...) + bias: mean 0, std 1 on SFT samples

Recipe (the same as notebook 04's demo): ``RewardModel.from_policy`` of the SFT model
(:func:`helpers.sft_pipeline.load_sft_model`), torch seeded with ``seed`` first (the head's init);
``train_reward_model`` with ``RewardConfig()`` (``TINY_REWARD_CONFIG`` under grading) on the pairs
of :func:`helpers.preference_pipeline.load_comparisons`, tokenized by ``comparison_items`` with the
model's context length; the best epoch (lowest validation loss) is kept. The normalisation is fitted
on one SFT sample (temperature 1, at most :data:`NORM_MAX_NEW_TOKENS` tokens, generator seeded with
``seed + 1``) for each of the first :data:`NORM_PROMPTS` *train* prompts of ``World(world_seed)``.

Files of the artifact: ``model.safetensors`` + ``config.json`` (the trunk, Hugging Face GPT-2
layout), ``reward_head.json`` (the head's weight and bias), ``normalization.json`` (``gain``,
``bias`` and the raw statistics they came from) and ``reward_history.json`` (the curves of
``train_reward_model``, timings, validation accuracy).

Because this module imports ``minirlhf.reward_model``, it works wherever notebook 04's reference
code is available (the course source tree, and releases of notebooks 05 and later) -- not in
notebook 04's own student release, which is why notebook 04 trains in its demo cells instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from helpers import artifacts
from helpers.default_model import builder
from helpers.preference_pipeline import load_comparisons
from helpers.runtime import is_grading
from helpers.runtime import progress as _progress_bar
from helpers.sft_pipeline import load_sft_model
from helpers.vocab import load_gpt2_ranks
from helpers.world import World, format_prompt
from minirlhf.reward_model import (
    TINY_REWARD_CONFIG,
    RewardConfig,
    RewardModel,
    comparison_items,
    fit_reward_normalization,
    score_texts,
    train_reward_model,
)
from minirlhf.sft import generate_responses
from minirlhf.tokenizer_gpt2 import encode, load_gpt2_checkpoint

__all__ = [
    "HEAD_FILE",
    "HISTORY_FILE",
    "NORM_FILE",
    "NORM_MAX_NEW_TOKENS",
    "NORM_PROMPTS",
    "build_reward_model",
    "load_reward_model",
    "read_reward_history",
    "reward_config",
    "reward_normalization",
]

HEAD_FILE = "reward_head.json"
NORM_FILE = "normalization.json"
HISTORY_FILE = "reward_history.json"
NORM_PROMPTS = 256  # SFT samples the normalisation is fitted on (8 under grading)
NORM_MAX_NEW_TOKENS = 64


def reward_config(tiny: bool) -> RewardConfig:
    """The recipe's :class:`minirlhf.reward_model.RewardConfig`: the full run, or the grading-size one."""
    return TINY_REWARD_CONFIG if tiny else RewardConfig()


def build_reward_model(
    tiny: bool = False, *, seed: int = 0, world_seed: int = 0, progress: bool = True
) -> tuple[RewardModel, dict[str, Any], dict[str, float]]:
    """Train the reward model now; returns ``(model, history, normalization)`` (model in eval mode).

    Torch's global RNG is left as it was.
    """
    config = dataclasses.replace(reward_config(tiny), seed=seed)
    sft = load_sft_model(tiny=tiny, seed=seed, world_seed=world_seed)
    data = load_comparisons(tiny=tiny, seed=seed, world_seed=world_seed)
    ranks = load_gpt2_ranks()
    max_len = sft.config.n_positions
    train_items = comparison_items(data["train"], ranks, max_len)
    val_items = comparison_items(data["val"], ranks, max_len)
    start = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RewardModel.from_policy(sft)
        history = train_reward_model(
            model, train_items, val_items, config,
            progress=lambda steps: _progress_bar(steps, desc="reward model", unit="step", disable=not progress),
        )
    history = dict(history, seconds=time.time() - start, n_train=len(train_items), n_val=len(val_items),
                   config=dataclasses.asdict(config))
    history["val_accuracy"] = history["val_acc"][history["best_epoch"]]  # the kept checkpoint's, measured in training

    prompts = World(world_seed).prompts("train")[: 8 if tiny else NORM_PROMPTS]
    responses = generate_responses(
        sft, [encode(format_prompt(p), ranks) for p in prompts], ranks,
        max_new_tokens=16 if tiny else NORM_MAX_NEW_TOKENS, generator=torch.Generator().manual_seed(seed + 1),
    )
    raw = score_texts(model, prompts, responses, ranks)
    gain, bias = fit_reward_normalization(raw)
    normalization = {"gain": gain, "bias": bias, "n_samples": len(raw)}
    return model.eval(), history, normalization


# ----------------------------------------------------------------------------- artifact


def _build(out_dir: Path, *, tiny: bool, seed: int, world_seed: int) -> None:
    checkpoint = builder("checkpoint")  # before training: a student release cannot write the model
    model, history, normalization = build_reward_model(tiny, seed=seed, world_seed=world_seed)
    checkpoint.save_model(model.trunk, out_dir)
    head = {"weight": model.head.weight.detach()[0].tolist(), "bias": model.head.bias.detach()[0].item()}
    (out_dir / HEAD_FILE).write_text(json.dumps(head) + "\n", encoding="utf-8")
    (out_dir / NORM_FILE).write_text(json.dumps(normalization, indent=2) + "\n", encoding="utf-8")
    (out_dir / HISTORY_FILE).write_text(json.dumps(history) + "\n", encoding="utf-8")


def _load(folder: Path, *, tiny: bool, seed: int, world_seed: int) -> RewardModel:
    model = RewardModel.from_policy(load_gpt2_checkpoint(folder))
    head = json.loads((folder / HEAD_FILE).read_text(encoding="utf-8"))
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([head["weight"]], dtype=model.head.weight.dtype))
        model.head.bias.fill_(head["bias"])
    return model.eval()


def register_artifacts() -> None:
    """Register the "reward_model" artifact (again, if a test swapped the registry)."""
    artifacts.register(
        "reward_model", _build, _load,
        depends_on=["helpers/reward_pipeline.py", "builders/checkpoint.py", "helpers/world.py", "helpers/vocab.py",
                    "minirlhf.reward_model",
                    "minirlhf.sft", "minirlhf.tokenizer_gpt2", "artifact:comparisons", "artifact:sft_model"],
        defaults={"tiny": False, "seed": 0, "world_seed": 0},
    )


register_artifacts()


def _tiny(tiny: bool | None) -> bool:
    return is_grading() if tiny is None else bool(tiny)


def load_reward_model(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> RewardModel:
    """The trained reward model (eval mode), from the artifact cache or trained now (minutes; tiny: seconds).

    ``tiny`` defaults to ``helpers.runtime.is_grading()``. Its raw scores are not normalised: apply
    :func:`reward_normalization`.
    """
    return artifacts.get("reward_model", tiny=_tiny(tiny), seed=seed, world_seed=world_seed)


def _read(name: str, tiny: bool | None, seed: int, world_seed: int) -> dict[str, Any]:
    folder = artifacts.path("reward_model", tiny=_tiny(tiny), seed=seed, world_seed=world_seed)
    return json.loads((folder / name).read_text(encoding="utf-8"))


def reward_normalization(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> tuple[float, float]:
    """``(gain, bias)``: ``gain * r + bias`` has mean 0 and std 1 on the SFT policy's samples."""
    norm = _read(NORM_FILE, tiny, seed, world_seed)
    return float(norm["gain"]), float(norm["bias"])


def read_reward_history(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> dict[str, Any]:
    """The ``reward_history.json`` of the reward model: loss and accuracy curves, best epoch, timings."""
    return _read(HISTORY_FILE, tiny, seed, world_seed)
