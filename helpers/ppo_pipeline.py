"""Models, vocabulary and bookkeeping around notebook 08's PPO loop (infrastructure, no graded code).

Notebook 08 writes the PPO-RLHF loop itself (``rollout``, ``score_responses``, ``reference_logprobs``,
``minibatch_indices``, ``ppo_update``, ``train_ppo``); nothing here re-implements any of it. This module
only prepares what the loop runs on and what the demo reports:

* :func:`load_models` -- the policy to train, the frozen reference (both notebook 02's SFT model), the
  frozen reward model of notebook 04 and its normalisation, on the **world vocabulary** (below), or GPT-2
  small (``RLHF_MODEL=gpt2-small``; pretrained weights, or a random initialisation with ``RLHF_INIT=random``
  or when the weights are out of reach -- for speed and memory figures only, and it says so);
* :class:`Vocabulary` -- prompts to token ids and responses back to text, whatever the numbering;
* :func:`gold_fn` -- the world's hidden gold score of a rollout batch (the loop never trains on it);
* :func:`output_dir` / :func:`summary_path` -- where the demo writes the checkpoint and ``summary.json``.

Why a world vocabulary
----------------------
The default model is GPT-2's architecture with GPT-2's 50,257-token vocabulary, but the instruction world
only ever uses ~400 of those tokens: the model was trained with a softmax over them plus sampled negatives
(:mod:`helpers.default_model`) and puts ~2e-4 of its probability anywhere else. On a CPU the 50,257-way
output layer is ~90 % of every forward and backward pass, and PPO runs many of both. So, for the default
model, :func:`restrict_vocabulary` builds an **exact** GPT-2 whose vocabulary is the world's tokens,
renumbered ``0..K-1``: the same weights, the token-embedding rows of those tokens only (the LM head is tied
to them). Its next-token distribution is the original one restricted to the world's tokens and renormalised.
Policy, reference and reward model are restricted the same way, so every log-probability, KL and score is
computed on one consistent model; ``Vocabulary.eos_id`` is ``<|endoftext|>``'s new number. GPT-2 small
keeps its full vocabulary (``Vocabulary`` is then the identity numbering).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from helpers.runtime import is_grading
from helpers.vocab import EOT_ID, load_gpt2_ranks
from helpers.world import World, format_prompt
from minirlhf.reward_model import RewardModel
from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config, decode, encode

__all__ = [
    "PPOModels",
    "Vocabulary",
    "gold_fn",
    "init_choice",
    "load_models",
    "output_dir",
    "restrict_reward_model",
    "restrict_vocabulary",
    "summary_path",
    "world_vocabulary",
]

_ranks = functools.cache(load_gpt2_ranks)  # one copy of GPT-2's ranks for this module (read, never modified)


# ----------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """A numbering of (a subset of) GPT-2's tokens: local id ``i`` is GPT-2 token ``gpt2_ids[i]``.

    ``gpt2_ids=None`` is the identity (GPT-2's own 50,257 ids).
    """

    gpt2_ids: list[int] | None = None

    def __post_init__(self) -> None:
        self._local: dict[int, int] | None = None
        if self.gpt2_ids is not None:
            self._local = {t: i for i, t in enumerate(self.gpt2_ids)}
            if EOT_ID not in self._local:
                raise ValueError("a restricted vocabulary must contain <|endoftext|> (50256)")

    @property
    def size(self) -> int:
        return 50257 if self.gpt2_ids is None else len(self.gpt2_ids)

    @property
    def eos_id(self) -> int:
        """The id of ``<|endoftext|>`` in this numbering."""
        return EOT_ID if self._local is None else self._local[EOT_ID]

    def from_gpt2(self, ids: Sequence[int]) -> list[int]:
        """GPT-2 ids -> local ids; KeyError names a token outside the vocabulary."""
        if self._local is None:
            return list(ids)
        try:
            return [self._local[int(t)] for t in ids]
        except KeyError as exc:
            raise KeyError(f"GPT-2 token {exc.args[0]} is not in the world vocabulary") from None

    def to_gpt2(self, ids: Sequence[int]) -> list[int]:
        """Local ids -> GPT-2 ids."""
        if self.gpt2_ids is None:
            return [int(t) for t in ids]
        return [self.gpt2_ids[int(t)] for t in ids]

    def encode_prompt(self, prompt: str) -> list[int]:
        """``format_prompt(prompt)`` as local token ids."""
        return self.from_gpt2(encode(format_prompt(prompt), _ranks()))

    def decode_response(self, ids: Sequence[int]) -> str:
        """The text of a response's local ids, cut at the first ``<|endoftext|>``, stripped."""
        out = []
        for t in self.to_gpt2(ids):
            if t == EOT_ID:
                break
            out.append(t)
        return decode(out, _ranks()).strip()


def world_vocabulary(world_seed: int = 0) -> Vocabulary:
    """The tokens the default model was trained on (``helpers.default_model.world_token_ids``)."""
    from helpers.default_model import world_token_ids

    return Vocabulary(world_token_ids(World(world_seed), n_pretrain=2000))


@torch.no_grad()
def restrict_vocabulary(model: GPT2, vocab: Vocabulary) -> GPT2:
    """A new ``GPT2`` with the vocabulary ``vocab``: same weights, embedding rows ``vocab.gpt2_ids`` only.

    ``model`` is not modified and shares no storage with the result (eval mode, same dtype and device).
    """
    if vocab.gpt2_ids is None:
        return copy.deepcopy(model)
    cfg = model.config
    small = GPT2(GPT2Config(vocab_size=vocab.size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, layer_norm_eps=cfg.layer_norm_eps))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["wte.weight"] = model.wte.weight[torch.tensor(vocab.gpt2_ids, device=model.wte.weight.device)].clone()
    small.load_state_dict(state)
    p = next(model.parameters())
    return small.to(device=p.device, dtype=p.dtype).eval()


@torch.no_grad()
def restrict_reward_model(reward_model: RewardModel, vocab: Vocabulary) -> RewardModel:
    """The reward model with its trunk restricted to ``vocab`` (head copied); the input is not modified."""
    out = RewardModel.from_policy(restrict_vocabulary(reward_model.trunk, vocab))
    out.head.load_state_dict(reward_model.head.state_dict())
    return out.to(next(reward_model.parameters()).device).eval()


# ----------------------------------------------------------------------------- the models


def init_choice() -> str:
    """``"pretrained"`` or ``"random"``: ``$RLHF_INIT`` (unset = pretrained). Only GPT-2 small reads it."""
    raw = os.environ.get("RLHF_INIT", "").strip().lower() or "pretrained"
    if raw not in ("pretrained", "random"):
        raise ValueError(f"RLHF_INIT={raw!r} is not understood; use 'pretrained' or 'random'")
    return raw


@dataclass
class PPOModels:
    """Everything the PPO loop runs on. ``policy`` is trained; ``reference`` and ``reward_model`` are frozen."""

    policy: GPT2
    reference: GPT2
    reward_model: RewardModel
    norm: tuple[float, float]
    vocab: Vocabulary
    description: str
    model_name: str  # "default", "gpt2-small" or "gpt2-small (random init)"


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_models(tiny: bool | None = None, *, restrict: bool = True, seed: int = 0, world_seed: int = 0) -> PPOModels:
    """Policy, frozen reference, frozen reward model (+ normalisation) and vocabulary for PPO.

    Default model (``RLHF_MODEL`` unset or ``default``; always under grading): policy and reference are two
    copies of ``helpers.sft_pipeline.load_sft_model(tiny)``, the reward model is
    ``helpers.reward_pipeline.load_reward_model(tiny)`` with ``reward_normalization(tiny)``; with ``restrict``
    all three use the world vocabulary (:func:`restrict_vocabulary`).

    ``RLHF_MODEL=gpt2-small``: the policy is GPT-2 small (``helpers.weights.gpt2_small_path()``; there is no
    SFT run of it, so it starts from the pretrained model), or GPT-2 small's architecture with GPT-2's random
    initialisation when ``RLHF_INIT=random`` or when the weights cannot be found -- for speed and memory
    figures, the text is noise. The reference is a copy of the policy, the reward model the default one (it
    reads GPT-2 token ids of any model). Full vocabulary.
    """
    from helpers.default_model import model_choice
    from helpers.reward_pipeline import load_reward_model, reward_normalization
    from helpers.sft_pipeline import load_sft_model

    tiny = is_grading() if tiny is None else bool(tiny)
    reward_model = load_reward_model(tiny=tiny, seed=seed, world_seed=world_seed)
    norm = reward_normalization(tiny=tiny, seed=seed, world_seed=world_seed)
    if tiny or model_choice() == "default":
        sft = load_sft_model(tiny=tiny, seed=seed, world_seed=world_seed)
        vocab = world_vocabulary(world_seed) if restrict else Vocabulary()
        policy, reference = restrict_vocabulary(sft, vocab), restrict_vocabulary(sft, vocab)
        reward_model = restrict_reward_model(reward_model, vocab) if restrict else reward_model
        n = sum(p.numel() for p in policy.parameters())
        what = (f"{'tiny ' if tiny else ''}default model after SFT ({policy.config.n_layer} layers, "
                f"{policy.config.n_embd} wide, {n:,} parameters), world vocabulary of {vocab.size} tokens"
                if restrict else f"{'tiny ' if tiny else ''}default model after SFT, full GPT-2 vocabulary")
        return PPOModels(policy, _frozen(reference), _frozen(reward_model), norm, vocab, what, "default")

    from helpers.weights import WeightsUnavailableError, gpt2_small_path
    from minirlhf.tokenizer_gpt2 import load_gpt2_checkpoint

    name, note = "gpt2-small", "GPT-2 small, pretrained weights (no SFT run: PPO starts from the base model)"
    if init_choice() == "random":
        path = None
        note = "GPT-2 small's architecture with a RANDOM initialisation (RLHF_INIT=random): speed and memory only"
    else:
        try:
            path = gpt2_small_path()
        except WeightsUnavailableError as exc:
            path = None
            note = ("GPT-2 small's weights are not available, so this runs GPT-2 small's architecture with a "
                    f"RANDOM initialisation: speed and memory figures only ({str(exc).splitlines()[0]})")
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = GPT2(GPT2Config()).eval()
        name = "gpt2-small (random init)"
    else:
        policy = load_gpt2_checkpoint(path)
    reference = copy.deepcopy(policy)
    return PPOModels(policy, _frozen(reference), _frozen(reward_model), norm, Vocabulary(), note, name)


# ----------------------------------------------------------------------------- gold and summary


def gold_fn(world: World, prompts: Sequence[str], vocab: Vocabulary) -> Callable[[Sequence[int], dict[str, torch.Tensor]], float]:
    """A callable ``(prompt_indices, batch) -> mean gold score`` of a rollout batch on ``prompts``.

    ``batch`` holds ``response_ids`` and ``response_mask`` (``[B, R]``); row ``b`` answers
    ``prompts[prompt_indices[b]]``. Gold is the world's hidden preference: logged, never trained on.
    """

    def mean_gold(prompt_indices: Sequence[int], batch: dict[str, torch.Tensor]) -> float:
        scores = [world.gold_score(prompts[int(i)], vocab.decode_response(row[m.bool()].tolist()))
                  for i, row, m in zip(prompt_indices, batch["response_ids"], batch["response_mask"])]
        return sum(scores) / len(scores)

    return mean_gold


def output_dir(name: str = "08_ppo_loop") -> Path:
    """Where the demo writes ``summary.json`` and the checkpoint: ``<out>/08_ppo_loop`` when the demo runner
    set ``COURSE_PLOT_DIR`` (to ``<out>/plots/08_ppo_loop``), else ``./ppo_output`` next to the notebook."""
    plot_dir = os.environ.get("COURSE_PLOT_DIR", "")
    return Path(plot_dir).expanduser().parent.parent / name if plot_dir else Path("ppo_output")


def summary_path(name: str = "08_ppo_loop") -> Path:
    """``output_dir(name) / "summary.json"``."""
    return output_dir(name) / "summary.json"


def finite_or_none(x: Any) -> Any:
    """``x`` for JSON: non-finite floats become ``None``."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
