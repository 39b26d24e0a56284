"""The reward-KL story of the course: what each stage buys, in reward, for the KL it spends.

Every stage of the InstructGPT recipe moves a policy away from the model it started from, and pays for
the reward it gains with KL divergence to that model. Each notebook measures its own curve of the two
(on real samples of the default model; tiny under grading) and writes the numbers next to its figures.
This module holds the pieces they share. None of it is a graded function of any notebook: the notebooks
sample with their own (or earlier notebooks' exported) code and hand the numbers in.

* :func:`best_of_n_kl` -- the KL of best-of-``n`` sampling to the sampler, ``log n - (n - 1) / n``.
* :func:`expected_best_of_n` / :func:`best_of_n_curve` -- the expected score of the best of ``n`` samples,
  from ``m >= n`` samples per prompt, without the noise of drawing subsets.
* :func:`temperature_kl` -- the exact ``KL(softmax(z / T) || softmax(z))`` of a categorical.
* :class:`WorldTokens` -- sample the default model on the world's ~400 tokens instead of GPT-2's 50,257.
* :func:`reward_kl_path` / :func:`write_reward_kl` -- ``<out>/<id>/reward_kl.json`` beside the demo's plots.

Best-of-n, exactly
------------------
Draw ``n`` responses from a policy ``pi`` and keep the one a judge scores highest. If the judge's scores are
continuous (no ties), the kept response has ``KL(pi_best-of-n || pi) = log n - (n - 1) / n`` nats (Stiennon
et al. 2020, appendix G.3; Gao et al. 2022): the KL depends on ``n`` only, not on the policy or the judge.
With ties (a policy that repeats itself, a judge with few values) it is an upper bound (Beirami et al. 2024).

Its expected score is estimated from ``m`` samples of each prompt by the unbiased order-statistics estimator
(Nakano et al. 2021, appendix; Gao et al. 2022): sort a prompt's samples by the selecting score, ascending;
the best of a uniformly drawn ``n``-subset is the ``i``-th of them (1-based) with probability
``C(i - 1, n - 1) / C(m, n)``, so the mean over all ``C(m, n)`` subsets is that weighted sum of the judged
scores -- exact, with no subsets drawn. The selecting score and the judged one may differ: select by the
learned reward, judge by gold, and you measure what optimising the learned reward does to the truth.

Why the world's tokens
----------------------
The default model has GPT-2's 50,257-token vocabulary but was trained on the world's text, which uses ~400
of those tokens; it puts ~2e-4 of its probability anywhere else (:mod:`helpers.default_model`). On a CPU the
50,257-way output layer is ~90 % of a sampling step, so the curves sample from the same model restricted to
the world's tokens (:meth:`WorldTokens.restrict`: the same weights, the embedding rows of those tokens; its
next-token distribution is the original one restricted to them and renormalised), ~30 times faster.
``helpers.ppo_pipeline`` does the same for notebook 08's PPO loop.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "REWARD_KL_FILE",
    "WorldTokens",
    "best_of_n_curve",
    "best_of_n_kl",
    "expected_best_of_n",
    "reward_kl_path",
    "temperature_kl",
    "to_json",
    "write_reward_kl",
]

REWARD_KL_FILE = "reward_kl.json"


# ----------------------------------------------------------------------------- best-of-n


def best_of_n_kl(n: int) -> float:
    """``KL(best-of-n || policy) = log n - (n - 1) / n`` nats (exact for a judge without ties, else a bound)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"best_of_n_kl: n must be an int >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def _score_matrix(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty [N prompts, m samples] matrix, got shape {tuple(t.shape)}")
    return t


def expected_best_of_n(select: Any, n: int, judge: Any = None) -> torch.Tensor:
    r"""Per prompt, the expected ``judge`` score of the sample that ``select`` ranks first among ``n`` of its ``m``.

    Over all $\binom mn$ subsets of a row's $m$ samples: with the row sorted by ``select`` ascending,
    $\mathbb E = \sum_{i=n}^{m} \binom{i-1}{n-1} \big/ \binom mn \cdot \text{judge}_{(i)}$ (unbiased for the
    best of ``n`` fresh samples). Ties in ``select`` go to the later sample.

    Args:
        select: ``[N, m]`` scores that pick the best (e.g. the learned reward); tensor or nested lists.
        n: ``1 <= n <= m``.
        judge: ``[N, m]`` scores of the same samples that the picked one is judged by (e.g. gold);
            ``None``: ``select`` itself.

    Returns:
        ``[N]`` float64 on the CPU. ``n = 1`` gives each row's mean, ``n = m`` the judged score of its argmax.
    """
    s = _score_matrix(select, "select")
    j = s if judge is None else _score_matrix(judge, "judge")
    if j.shape != s.shape:
        raise ValueError(f"judge {tuple(j.shape)} must have the shape of select {tuple(s.shape)}")
    m = s.shape[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= m:
        raise ValueError(f"n must be an int in [1, m = {m}], got {n!r}")
    ranked = j.gather(1, s.argsort(dim=1, stable=True))  # judged scores, in the order of the selecting ones
    i = torch.arange(1, m + 1, dtype=torch.float64)
    # log C(i-1, n-1) - log C(m, n), in log space so that m may be large.
    log_w = (torch.lgamma(i) - math.lgamma(n) - torch.lgamma((i - n + 1).clamp_min(1))
             - (math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)))
    weights = torch.where(i >= n, log_w.exp(), torch.zeros((), dtype=torch.float64))
    return ranked @ weights


def best_of_n_curve(select: Any, ns: Sequence[int], judge: Any = None) -> dict[str, list[float]]:
    """The best-of-n curve over prompts: ``{"n", "kl", "score", "sem"}``, one entry per ``n`` of ``ns``.

    ``score`` is the mean over prompts of :func:`expected_best_of_n`, ``sem`` its standard error over prompts
    (``nan`` for one prompt), ``kl`` :func:`best_of_n_kl`. ``ns`` must increase strictly.
    """
    ns = [int(n) for n in ns]
    if not ns or any(b <= a for a, b in zip(ns, ns[1:])):
        raise ValueError(f"ns must be a non-empty, strictly increasing list, got {ns}")
    out: dict[str, list[float]] = {"n": ns, "kl": [best_of_n_kl(n) for n in ns], "score": [], "sem": []}
    for n in ns:
        per_prompt = expected_best_of_n(select, n, judge)
        out["score"].append(per_prompt.mean().item())
        count = per_prompt.numel()
        out["sem"].append(per_prompt.std().item() / math.sqrt(count) if count > 1 else float("nan"))
    return out


# ----------------------------------------------------------------------------- temperature


def temperature_kl(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Exact $\operatorname{KL}(\operatorname{softmax}(z / T) \,\|\, \operatorname{softmax}(z))$ over the last dim.

    The KL, in nats, of sampling at temperature $T > 0$ from the distribution the model states ($T = 1$),
    summed over the whole categorical: $\sum_v p_T(v) \bigl(\log p_T(v) - \log p_1(v)\bigr)$.

    Args:
        logits: ``[..., V]`` float (computed in float64).
        temperature: $T > 0$.

    Returns:
        ``[...]`` float64, ``>= 0``, ``0`` at ``T = 1``. Entries of ``logits`` equal to ``-inf`` (tokens the model
        never emits) contribute nothing.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError("temperature_kl: logits must be a float tensor [..., V]")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature_kl: temperature must be a number > 0, got {temperature!r}")
    z = logits.detach().double()
    log_p_t = torch.log_softmax(z / temperature, dim=-1)
    log_p_1 = torch.log_softmax(z, dim=-1)
    diff = torch.where(torch.isfinite(log_p_t), log_p_t - log_p_1, torch.zeros((), dtype=torch.float64))
    return (log_p_t.exp() * diff).sum(-1).clamp_min(0.0)


# ----------------------------------------------------------------------------- the world's tokens


@dataclasses.dataclass(frozen=True, eq=False)
class WorldTokens:
    """GPT-2 ids ``gpt2_ids`` (sorted, with ``<|endoftext|>``) renumbered ``0 .. K-1``: a vocabulary for fast sampling.

    ``tokens = WorldTokens.of_world()``; ``small = tokens.restrict(model)``; prompts go in as
    ``tokens.local(gpt2_ids)``, samples come back as ``tokens.to_gpt2(local_ids)``.
    """

    gpt2_ids: torch.Tensor  # [K] long, sorted

    @classmethod
    def of_world(cls, world_seed: int = 0) -> WorldTokens:
        """Every token of the world's text (``helpers.default_model.world_token_ids``): what the default model knows."""
        from helpers.default_model import world_token_ids  # needs notebook 01's tokenizer (minirlhf)
        from helpers.world import World

        return cls(torch.tensor(world_token_ids(World(world_seed), n_pretrain=2000), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.gpt2_ids.numel()

    @property
    def eos_id(self) -> int:
        """The local id of ``<|endoftext|>`` (GPT-2 id 50256)."""
        return self.local([50256])[0]

    def local(self, gpt2_ids: Sequence[int] | torch.Tensor) -> list[int]:
        """GPT-2 ids -> local ids; ``ValueError`` names a token outside this vocabulary."""
        ids = torch.as_tensor(gpt2_ids, dtype=torch.long).flatten()
        pos = torch.searchsorted(self.gpt2_ids, ids).clamp_max(self.size - 1)
        missing = ids[self.gpt2_ids[pos] != ids]
        if missing.numel():
            raise ValueError(f"GPT-2 tokens {missing.tolist()[:5]} are not in this vocabulary")
        return pos.tolist()

    def to_gpt2(self, local_ids: torch.Tensor) -> torch.Tensor:
        """Local ids (any shape) -> GPT-2 ids, same shape."""
        return self.gpt2_ids.to(local_ids.device)[local_ids]

    @torch.no_grad()
    def restrict(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of a GPT-2 (notebook 01's class, Hugging Face names) whose vocabulary is these tokens.

        Same weights; the token embedding (tied to the output layer) keeps the rows ``gpt2_ids`` only. Eval
        mode, same device and dtype; ``model`` is not modified.
        """
        small = copy.deepcopy(model)
        rows = model.wte.weight[self.gpt2_ids.to(model.wte.weight.device)].clone()
        small.wte = torch.nn.Embedding.from_pretrained(rows, freeze=False)
        small.config = dataclasses.replace(model.config, vocab_size=self.size)
        return small.eval()


# ----------------------------------------------------------------------------- reward_kl.json


def reward_kl_path(nb_id: str) -> Path | None:
    """``<out>/<nb_id>/reward_kl.json`` when the demo runner set ``COURSE_PLOT_DIR`` (to ``<out>/plots/<nb_id>``),
    else ``None``: the file goes next to the demo's plots, and only where plots are saved."""
    plot_dir = os.environ.get("COURSE_PLOT_DIR", "")
    if not plot_dir:
        return None
    return Path(plot_dir).expanduser().parent.parent / nb_id / REWARD_KL_FILE


def to_json(value: Any) -> Any:
    """Tensors and tuples -> lists, floats to 7 significant digits (non-finite -> ``None``), recursively."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):  # 7 significant digits: float32's precision, and short files
        return float(f"{value:.7g}") if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return to_json(value.item())
    raise TypeError(f"to_json: cannot write a {type(value).__name__}")


def write_reward_kl(nb_id: str, data: Mapping[str, Any]) -> Path | None:
    """Write ``data`` (:func:`to_json`) to :func:`reward_kl_path` (``nb_id``); return the path, or ``None`` if
    ``COURSE_PLOT_DIR`` is unset (a student's run writes nothing)."""
    path = reward_kl_path(nb_id)
    if path is None:
        return None
    payload = {"notebook": nb_id, **to_json(data)}
    # One key per line, each value on its line: readable, and short even for long lists.
    lines = [f" {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in payload.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path
