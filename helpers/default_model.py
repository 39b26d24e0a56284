"""The course's default policy model: GPT-2's architecture, small, trained on the instruction world.

GPT-2 small's weights may be out of reach (no network, 548 MB), so by default the course runs on
a **small GPT-2** -- the same architecture (``minirlhf.tokenizer_gpt2.GPT2``) and the real GPT-2
BPE vocabulary (50,257 tokens) -- trained from scratch for a few minutes on the text of the
embedded instruction world (:mod:`helpers.world`). It is a *base* model: it writes the world's
language and knows the ``"Instruction: ...\\nResponse:"`` format and to end a response with
``<|endoftext|>``, but it learned the format from a noisy pool of responses (careless labelers),
so supervised fine-tuning on the labelers' demonstrations (notebook 02) still improves it.

Switching every notebook to GPT-2 small
---------------------------------------
One setting: the environment variable ``RLHF_MODEL``.

* ``RLHF_MODEL=default`` (or unset): :func:`policy_model` returns the default model above.
* ``RLHF_MODEL=gpt2-small``: :func:`policy_model` returns the real GPT-2 small (124M), loaded by
  ``minirlhf.tokenizer_gpt2.load_gpt2_checkpoint`` from ``helpers.weights.gpt2_small_path()``
  (``$GPT2_WEIGHTS``, the cache, or a download; a clear error says what to do if none works).

Set it before starting Jupyter (``RLHF_MODEL=gpt2-small jupyter lab``) or at the top of a
notebook (``os.environ["RLHF_MODEL"] = "gpt2-small"``). Both models share GPT-2's tokenizer,
so nothing else changes; read ``model.config.n_positions`` (128 for the default model, 1024
for GPT-2 small) rather than assuming a context length. While nbgrader grades
(``helpers.runtime.is_grading()``) :func:`policy_model` always returns the *tiny* default
model (:data:`TINY_CONFIG`, trained in seconds) so that every cell stays fast.

Artifacts
---------
``helpers.artifacts`` caches the trained model as the artifact ``"default_model"`` (config
``tiny``, ``seed``, ``world_seed``): ``model.safetensors`` + ``config.json`` (the Hugging Face
GPT-2 layout, so ``load_gpt2_checkpoint(folder)`` reads it) + ``training.json`` (loss curve,
held-out loss, timings). :func:`load_default_model` gets it: shipped with a release (in ``artifacts/``
beside the notebook), cached, or -- in the course's source tree -- trained on first use.

Training recipe (infrastructure, not a graded function)
-------------------------------------------------------
The training code is :mod:`builders.default_model`, in the course's source tree only: its loop
would show notebook 02's answers (and its checkpoint writer notebook 01's file format), so student
releases ship the trained model instead. This module keeps the configurations and the texts.

* Data: ``World.pretraining_corpus`` texts and instruction-formatted examples
  (:func:`helpers.world.format_example`) of *train* prompts whose responses come from a noisy
  pool: mostly the rambling, sloppy, distracted and careless labelers
  (:data:`BASE_LABELER_WEIGHTS`), and 15 % of them answer another prompt of the same family
  (:data:`BASE_MISMATCH_FRACTION`). The pool's mean gold score is ~0.6 against ~1.2 for the
  labelers' demonstrations that SFT uses. Documents (each ending with ``<|endoftext|>``) are
  packed into rows of up to ``max_len`` tokens; every row starts with a document at position 0,
  like a prompt at generation time.
* Loss: next-token cross-entropy on every real token. The output layer over 50,257 classes
  would cost ~90 % of the compute (and minutes per hundred steps on 2 CPU cores), yet the world
  uses ~400 of those tokens. So the softmax is **exact over the world's tokens plus a uniform
  sample of ``n_negatives`` other tokens**, whose logits get ``+ log(#others / n_negatives)``
  (sampled softmax: an unbiased estimate of the partition function's remaining mass). The
  sampled tokens are pushed down like a full softmax would push them; after training the model
  puts a negligible probability on tokens the world never uses (``training.json`` records it).
* AdamW, linear warm-up then cosine decay to 10 %, gradient clipping at 1.0.

Measured (``benchmarks/default_model.py --threads 1``; 4 layers, 128 wide, 600 steps of 32 rows
of <= 64 tokens): ~200 s of CPU time on one core of the course's 2-core machine; final
training loss 0.65, held-out perplexity 2.15 (pretraining texts) / 1.91 (val examples);
mean gold score on the 74 val prompts +0.91 greedy, +0.05 at temperature 0.7 (labelers'
demonstrations: 1.05; ``World.good_response``: 2.03); 97 % of T=0.7 samples end with
``<|endoftext|>`` within 64 tokens; probability on tokens outside the world ~1e-4.
The tiny model (2 layers, 32 wide, 250 steps of 16 rows) takes ~10 s of CPU time.
"""

from __future__ import annotations

import importlib
import json
import os
import random
from pathlib import Path
from types import ModuleType
from typing import Any

from helpers import artifacts
from helpers.runtime import is_grading
from helpers.vocab import EOT_ID, load_gpt2_ranks
from helpers.world import LABELERS, SPLITS, World, format_example
from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config, encode, load_gpt2_checkpoint

__all__ = [
    "BASE_LABELER_WEIGHTS",
    "BASE_MISMATCH_FRACTION",
    "DEFAULT_CONFIG",
    "DEFAULT_TRAINING",
    "TINY_CONFIG",
    "TINY_TRAINING",
    "builder",
    "encode_cached",
    "load_default_model",
    "model_choice",
    "policy_model",
    "read_training_log",
    "register_artifacts",
    "save_model",
    "train_default_model",
    "training_documents",
    "world_token_ids",
]

DEFAULT_CONFIG = GPT2Config(vocab_size=50257, n_positions=128, n_embd=128, n_layer=4, n_head=4)
TINY_CONFIG = GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2)

# Training hyper-parameters (everything train_default_model takes besides the model config).
DEFAULT_TRAINING: dict[str, Any] = dict(
    steps=600, batch_size=32, lr=5e-3, seed=0, world_seed=0,
    n_pretrain=20000, instruct_per_prompt=4, instruct_fraction=0.35, max_len=64,
    n_negatives=1024, warmup=30, weight_decay=0.01, eval_rows=48,
)
TINY_TRAINING: dict[str, Any] = dict(
    DEFAULT_TRAINING, steps=250, batch_size=16, lr=1e-2, n_pretrain=3000, instruct_per_prompt=1,
    n_negatives=256, warmup=10, eval_rows=16,
)

# Who wrote the instruction examples the base model sees: labeler index -> weight. Mostly the
# careless profiles of helpers.world.LABELERS, so SFT on the labelers' demonstrations improves it.
BASE_LABELER_WEIGHTS: dict[str, float] = {
    "careful-a": 0.0, "careful-b": 0.0, "steady-a": 0.25, "steady-b": 0.25,
    "rambler": 1.0, "sloppy": 1.0, "distracted": 1.0, "careless": 1.0,
}
# Share of the base model's instruction examples whose response answers ANOTHER train prompt of
# the same family (the prompt is ignored, as on a web page): SFT teaches the model to stay on topic.
BASE_MISMATCH_FRACTION = 0.15

LOG_FILE = "training.json"


# ----------------------------------------------------------------------------- tokens


_encode_memo: dict[str, list[int]] = {}


def encode_cached(text: str) -> list[int]:
    """``minirlhf.tokenizer_gpt2.encode(text, load_gpt2_ranks())``, memoised per text (the world repeats itself)."""
    ids = _encode_memo.get(text)
    if ids is None:
        ids = _encode_memo[text] = encode(text, _ranks())
    return list(ids)


_ranks_cache: dict[bytes, int] | None = None


def _ranks() -> dict[bytes, int]:
    global _ranks_cache
    if _ranks_cache is None:
        _ranks_cache = load_gpt2_ranks()
    return _ranks_cache


def _base_instruction_examples(world: World, per_prompt: int, seed: int) -> list[str]:
    """Instruction-formatted examples of *train* prompts written by the noisy labeler pool
    (:data:`BASE_LABELER_WEIGHTS`), a :data:`BASE_MISMATCH_FRACTION` of them answering another
    prompt of the same family."""
    names = [p.name for p in LABELERS]
    weights = [BASE_LABELER_WEIGHTS.get(n, 1.0) for n in names]
    train = world.prompts("train")
    by_family: dict[str, list[str]] = {}
    for p in train:
        by_family.setdefault(world.info(p).family, []).append(p)
    out = []
    for k in range(per_prompt):
        for p in train:
            rng = random.Random(f"base|{world.seed}|{seed}|{k}|{p}")
            labeler = rng.choices(range(len(names)), weights)[0]
            answered = p
            if rng.random() < BASE_MISMATCH_FRACTION:
                answered = rng.choice([q for q in by_family[world.info(p).family] if q != p])
            out.append(format_example(p, world.write_response(answered, rng, labeler=labeler)))
    return out


def training_documents(world: World, n_pretrain: int, instruct_per_prompt: int, seed: int = 0) -> dict[str, list[str]]:
    """The base model's texts: ``{"pretrain": [...], "instruct": [...]}`` (instruct ends with ``<|endoftext|>``)."""
    return {
        "pretrain": world.pretraining_corpus(n_pretrain, seed=seed),
        "instruct": _base_instruction_examples(world, instruct_per_prompt, seed),
    }


def world_token_ids(world: World, n_pretrain: int = 2000) -> list[int]:
    """Sorted ids of every token the world's text uses: all prompts (formatted, every split), one
    demonstration per prompt, ``n_pretrain`` pretraining texts, the noisy pool, and ``<|endoftext|>``."""
    ids = {EOT_ID}
    for split in SPLITS:
        for d in world.demonstrations(split):
            ids.update(encode_cached(format_example(d["prompt"], d["response"])))
    for text in world.pretraining_corpus(n_pretrain):
        ids.update(encode_cached(text))
    for text in _base_instruction_examples(world, 1, 0):
        ids.update(encode_cached(text))
    return sorted(ids)


# ----------------------------------------------------------------------------- the artifact


def builder(module: str) -> ModuleType:
    """``builders.<module>``, which builds artifacts: the course's source tree only (never released), so
    in a student release this raises :class:`helpers.artifacts.ArtifactError` saying where models come from."""
    try:
        return importlib.import_module(f"builders.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("builders", f"builders.{module}"):
            raise
        raise artifacts.ArtifactError(
            f"building a model needs builders/{module}.py, which only the course's source tree has. A student "
            "release ships the trained models prebuilt in artifacts/ next to the notebook: open the notebook "
            "from its release folder (the instructor ships them with `python -m autograder release`)."
        ) from None


def train_default_model(*args: Any, **kwargs: Any) -> tuple[GPT2, dict[str, Any]]:
    """Train a default model now: :func:`builders.default_model.train_default_model` (the course's
    source tree only; same arguments)."""
    return builder("default_model").train_default_model(*args, **kwargs)


def save_model(model: GPT2, folder: str | Path) -> None:
    """Write ``model.safetensors`` and a Hugging Face-style ``config.json`` into ``folder``:
    :func:`builders.checkpoint.save_model` (building artifacts; the course's source tree only)."""
    builder("checkpoint").save_model(model, folder)


def _build(out_dir: Path, **config: Any) -> None:
    builder("default_model").build(out_dir, **config)


def _recipe(tiny: bool, seed: int, world_seed: int) -> tuple[GPT2Config, dict[str, Any]]:
    training = dict(TINY_TRAINING if tiny else DEFAULT_TRAINING)
    training.update(seed=seed, world_seed=world_seed)
    return (TINY_CONFIG if tiny else DEFAULT_CONFIG), training


def _load(folder: Path, *, tiny: bool, seed: int, world_seed: int) -> GPT2:
    config, _ = _recipe(tiny, seed, world_seed)
    return load_gpt2_checkpoint(folder, config)


def register_artifacts() -> None:
    """Register ``"default_model"`` with :mod:`helpers.artifacts` (done on import)."""
    artifacts.register(
        "default_model", _build, _load,
        depends_on=["helpers/default_model.py", "builders/default_model.py", "builders/checkpoint.py",
                    "helpers/world.py", "helpers/vocab.py", "minirlhf.tokenizer_gpt2"],
        defaults={"tiny": False, "seed": 0, "world_seed": 0},
    )


register_artifacts()


def load_default_model(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> GPT2:
    """The trained default model (eval mode), from the artifact cache or trained now (~3 min;
    the tiny one in seconds). ``tiny`` defaults to ``helpers.runtime.is_grading()``."""
    if tiny is None:
        tiny = is_grading()
    return artifacts.get("default_model", tiny=bool(tiny), seed=seed, world_seed=world_seed)


def read_training_log(tiny: bool | None = None, *, seed: int = 0, world_seed: int = 0) -> dict[str, Any]:
    """The ``training.json`` of the default model (loss curve, held-out loss, timings)."""
    if tiny is None:
        tiny = is_grading()
    folder = artifacts.path("default_model", tiny=bool(tiny), seed=seed, world_seed=world_seed)
    return json.loads((folder / LOG_FILE).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the switch


_CHOICES = {"default": "default", "gpt2-small": "gpt2-small", "gpt2_small": "gpt2-small",
            "gpt2": "gpt2-small", "small": "gpt2-small"}


def model_choice(prefer_gpt2_small: bool | None = None) -> str:
    """``"gpt2-small"`` or ``"default"``: the argument if given, else ``$RLHF_MODEL`` (unset = default)."""
    if prefer_gpt2_small is not None:
        return "gpt2-small" if prefer_gpt2_small else "default"
    raw = os.environ.get("RLHF_MODEL", "").strip().lower()
    if not raw:
        return "default"
    if raw not in _CHOICES:
        raise ValueError(f"RLHF_MODEL={raw!r} is not understood; use 'default' or 'gpt2-small'")
    return _CHOICES[raw]


def policy_model(prefer_gpt2_small: bool | None = None) -> GPT2:
    """The model every notebook starts from (eval mode).

    ``prefer_gpt2_small=None`` reads ``$RLHF_MODEL`` (``default`` or ``gpt2-small``). Under
    grading the tiny default model is used unless ``prefer_gpt2_small=True`` is passed explicitly.
    GPT-2 small comes from ``helpers.weights.gpt2_small_path()``, which raises
    ``WeightsUnavailableError`` with instructions when the weights cannot be found or fetched.
    """
    if prefer_gpt2_small is None and is_grading():
        return load_default_model(tiny=True)
    if model_choice(prefer_gpt2_small) == "gpt2-small":
        from helpers.weights import gpt2_small_path

        return load_gpt2_checkpoint(gpt2_small_path())
    return load_default_model()
