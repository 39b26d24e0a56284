"""The SFT model: the default model fine-tuned on the labelers' demonstrations by notebook 02's code.

Later notebooks start from the model that notebook 02 produces: the reward model (notebook 04)
is initialised from it and PPO (notebook 08) starts from it and is held close to it by a KL
penalty. This module builds that model with the **reference code exported from notebook 02**
(``minirlhf.sft``: ``build_sft_example``, ``train_sft`` and through it ``pad_batch``,
``position_ids_from_mask``, ``sft_loss``, ``clip_grad_norm_``, ``cosine_lr``, ``adamw_step``,
``sft_train_step``, ``perplexity``) -- nothing here re-implements them -- and caches it as the
artifact ``"sft_model"`` (:mod:`helpers.artifacts`)::

    from helpers.sft_pipeline import load_sft_model
    sft = load_sft_model()          # tiny under grading, like load_default_model()

Recipe (the same as notebook 02's demo): one demonstration per *train* prompt of
``World(world_seed)``, formatted with :func:`helpers.world.format_prompt`, tokenized with GPT-2's
BPE and cut to :data:`MAX_LEN` tokens by ``build_sft_example``; ``train_sft`` with
``minirlhf.sft.SFTConfig()`` (the full run) or ``minirlhf.sft.TINY_SFT_CONFIG`` (grading), on
top of ``helpers.default_model.load_default_model(tiny)``; validation perplexity on the *val*
prompts' demonstrations.

Files of the artifact: ``model.safetensors`` + ``config.json`` (Hugging Face GPT-2 layout, read
by ``minirlhf.tokenizer_gpt2.load_gpt2_checkpoint``) and ``sft_history.json`` (the curves of
``train_sft`` and timings).

Because this module imports ``minirlhf.sft``, it works wherever notebook 02's reference code is
available (the course source tree, and releases of notebooks 03 and later) -- not in notebook
02's own student release, which is why notebook 02 trains in its demo cells instead of calling it.
Releases load the model shipped in ``artifacts/``; building it (writing the checkpoint) needs
``builders/``, which only the course's source tree has.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from helpers import artifacts
from helpers.default_model import builder, load_default_model
from helpers.runtime import is_grading
from helpers.runtime import progress as _progress_bar
from helpers.vocab import EOT_ID, load_gpt2_ranks
from helpers.world import World, format_prompt
from minirlhf.sft import SFTConfig, TINY_SFT_CONFIG, build_sft_example, train_sft
from minirlhf.tokenizer_gpt2 import GPT2, encode, load_gpt2_checkpoint

__all__ = [
    "HISTORY_FILE",
    "MAX_LEN",
    "build_sft_model",
    "load_sft_model",
    "read_sft_history",
    "sft_config",
    "sft_examples",
]

MAX_LEN = 128  # tokens per example: every demonstration of the world fits (the longest is ~110)
HISTORY_FILE = "sft_history.json"

_ranks_cache: dict[bytes, int] | None = None


def _ranks() -> dict[bytes, int]:
    global _ranks_cache
    if _ranks_cache is None:
        _ranks_cache = load_gpt2_ranks()
    return _ranks_cache


def sft_examples(world: World, split: str, max_len: int = MAX_LEN) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, loss_mask)`` of the world's demonstrations for ``split`` (one per prompt).

    Prompt ``format_prompt(p)``, response ``" " + r``, EOS appended by ``build_sft_example``; so
    the ids equal the tokenization of ``format_example(p, r)`` when nothing is truncated.
    """
    ranks = _ranks()
    return [
        build_sft_example(encode(format_prompt(d["prompt"]), ranks), encode(" " + d["response"], ranks), EOT_ID, max_len)
        for d in world.demonstrations(split)
    ]


def sft_config(tiny: bool) -> SFTConfig:
    """The recipe's :class:`minirlhf.sft.SFTConfig`: the full run, or the grading-size one."""
    return TINY_SFT_CONFIG if tiny else SFTConfig()


def build_sft_model(
    tiny: bool = False, *, seed: int = 0, world_seed: int = 0, base: GPT2 | None = None, progress: bool = True
) -> tuple[GPT2, dict[str, Any]]:
    """Fine-tune ``base`` in place (default: a freshly loaded ``load_default_model(tiny)``); returns
    ``(model, history)``.

    ``history`` is ``train_sft``'s dict plus ``seconds``, ``n_train`` and ``n_val``. The model is left
    in eval mode. Torch's global RNG is left as it was (training draws from its own generator).
    """
    config = dataclasses.replace(sft_config(tiny), seed=seed)
    world = World(world_seed)
    train, val = sft_examples(world, "train"), sft_examples(world, "val")
    if tiny:  # grading: a few steps on a few examples, just to exercise the pipeline
        train, val = train[:48], val[:8]
    model = load_default_model(tiny=tiny, world_seed=world_seed) if base is None else base
    start = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        history = train_sft(
            model, train, val, config,
            progress=lambda steps: _progress_bar(steps, desc="SFT", unit="step", disable=not progress),
        )
    history = dict(history, seconds=time.time() - start, n_train=len(train), n_val=len(val))
    return model.eval(), history


# ----------------------------------------------------------------------------- artifact


def _build(out_dir: Path, *, tiny: bool, seed: int, world_seed: int) -> None:
    checkpoint = builder("checkpoint")  # before training: a student release cannot write the model
    model, history = build_sft_model(tiny, seed=seed, world_seed=world_seed)
    checkpoint.save_model(model, out_dir)
    history["config"] = dataclasses.asdict(sft_config(tiny))
    (out_dir / HISTORY_FILE).write_text(json.dumps(history) + "\n", encoding="utf-8")


def _load(folder: Path, *, tiny: bool, seed: int, world_seed: int) -> GPT2:
    return load_gpt2_checkpoint(folder)


def register_artifacts() -> None:
    """Register the "sft_model" artifact (again, if a test swapped the registry)."""
    artifacts.register(
        "sft_model", _build, _load,
        depends_on=["helpers/sft_pipeline.py", "builders/checkpoint.py", "helpers/world.py", "helpers/vocab.py",
                    "minirlhf.sft", "minirlhf.tokenizer_gpt2", "artifact:default_model"],
        defaults={"tiny": False, "seed": 0, "world_seed": 0},
    )


register_artifacts()


def load_sft_model(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> GPT2:
    """The SFT model (eval mode), from the artifact cache or fine-tuned now.

    ``tiny`` defaults to ``helpers.runtime.is_grading()``. The default model it starts from is
    fetched (or trained) first through ``helpers.default_model.load_default_model``.
    """
    if tiny is None:
        tiny = is_grading()
    return artifacts.get("sft_model", tiny=bool(tiny), seed=seed, world_seed=world_seed)


def read_sft_history(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> dict[str, Any]:
    """The ``sft_history.json`` of the SFT model: loss, learning rate, grad norm, validation curves."""
    if tiny is None:
        tiny = is_grading()
    folder = artifacts.path("sft_model", tiny=bool(tiny), seed=seed, world_seed=world_seed)
    return json.loads((folder / HISTORY_FILE).read_text(encoding="utf-8"))
