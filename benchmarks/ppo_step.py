"""One PPO optimisation step, ours vs the classic TRL ``PPOTrainer.step``; rollout speed; a whole iteration.

    .venv/bin/python benchmarks/ppo_step.py            # everything, GPT-2 small architecture (about 10 min)
    .venv/bin/python benchmarks/ppo_step.py --quick    # smoke run: 2 layers, 1 timed step
    .venv/bin/python benchmarks/ppo_step.py --only step --repeats 5

What is measured (every part in its own subprocess, so ``ru_maxrss`` is that side's peak RSS alone):

* **step** — one PPO optimisation step given query + response tokens and scores: the no-grad forward of
  policy + value (old log-probs, values) and of the frozen reference, per-token KL-shaped rewards, GAE,
  whitened advantages, then ``ppo_epochs`` x (batch / minibatch) minibatches of forward, backward, grad-norm
  clipping and Adam, and the adaptive-KL update. Ours: notebook 08 (``rollout``'s forward pass,
  ``reference_logprobs``, notebook 06's rewards and GAE, ``ppo_update``: ``train_ppo``'s body after sampling
  and scoring). The peer: ``trl.PPOTrainer.step`` of trl 0.11.4 (TRL >= 1.0 removed it), run in its own venv,
  ``benchmarks/.peer-venv/``, which this script builds from ``benchmarks/peer-requirements.txt``.
* **generate** — sampling the responses on the same shapes: notebook 01's KV-cache ``generate`` vs
  Hugging Face ``generate`` (transformers 4.45.2, what TRL's ``PPOTrainer.generate`` calls), temperature 1,
  EOS disabled; one greedy run each checks that both produce the same tokens.
* **iteration** — a whole PPO iteration of ours, split by phase (generate / score / ref / update), with
  policy + value head + frozen reference + frozen reward model in fp32; its peak RSS is the memory plan.

Both sides hold the SAME weights: a random-init GPT-2 (``GPT2`` of notebook 01, GPT-2's init), saved once
to a temporary checkpoint that both load. GPT-2 small's real weights are not reachable here; the speed and
memory of a step do not depend on the weight values. Same shapes, settings, optimizer (torch Adam, same
lr), dtype (fp32), dropout off on both sides, 1 thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``).
Times are the median over ``--repeats`` timed steps after ``--warmup`` untimed ones, in process CPU seconds
(robust to other jobs on a shared machine; wall-clock is printed beside); the two sides' steps run in turn,
one at a time, so that a drifting load hits both alike. Targets (issue 8): ours >= 1.5x
faster per step and <= 0.75x TRL's peak RSS; a whole iteration at batch 8 in <= 4 GiB.

Two floors are printed beside the ratios, so a missed target says whether any rewrite could meet it: the
**matmul floor** (CPU time of the step's weight products alone, the work both sides must do) and the
**memory floor** (RSS of Python + torch before any model, plus the weights, gradients, Adam's two moments and
the frozen reference, which every fp32 PPO step with a trained embedding holds at once).

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH = ROOT / "benchmarks"
PEER_VENV = BENCH / ".peer-venv"
PEER_REQUIREMENTS = BENCH / "peer-requirements.txt"
PEER_SCRIPT = BENCH / "_peer_trl.py"
sys.path.insert(0, str(BENCH))
from _peer_trl import make_data  # noqa: E402  (stdlib-only at import: the same tokens and scores on both sides)
NB08 = ROOT / "notebooks" / "08_ppo_loop" / "08_ppo_loop.ipynb"
WEIGHTS_NOTE = ("random-init weights (GPT-2 small architecture, GPT-2's init): the real GPT-2 small weights are not "
                "reachable here; speed and memory do not depend on the weight values")
TARGETS = {"speedup": 1.5, "memory_ratio": 0.75, "iteration_peak_rss_mib": 4096.0}
INTERLEAVE_ENV, READY = "PPO_STEP_INTERLEAVED", "@ready"
ENV_1_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


# ----------------------------------------------------------------------------------------------------------
# the harness: peer venv, subprocesses, checkpoint
# ----------------------------------------------------------------------------------------------------------

def ensure_peer_venv(rebuild: bool = False) -> Path:
    """``benchmarks/.peer-venv/`` with exactly peer-requirements.txt installed; rebuilt when that file changes."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "requirements.sha256"
    digest = hashlib.sha256(PEER_REQUIREMENTS.read_bytes()).hexdigest()
    if not rebuild and python.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python
    print(f"building the TRL peer venv in {PEER_VENV.relative_to(ROOT)} (pip install -r "
          f"{PEER_REQUIREMENTS.relative_to(ROOT)}; about a minute) ...", flush=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(PEER_VENV)
    # every torch-dependent package resolves against the pinned torch==2.13.0 (a local CPU wheel): no other torch
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "-r", str(PEER_REQUIREMENTS)], capture_output=True, text=True)
    if pip.returncode != 0:
        raise SystemExit(f"pip install -r {PEER_REQUIREMENTS.name} failed:\n{pip.stderr[-4000:]}")
    check = "import torch, trl, transformers; print(torch.__version__, trl.__version__, transformers.__version__)"
    got = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True).stdout.split()
    if not (got[0].startswith("2.13.0") and got[1] == "0.11.4" and got[2] == "4.45.2"):
        raise SystemExit(f"peer venv has torch/trl/transformers {got}, expected 2.13.0 / 0.11.4 / 4.45.2")
    stamp.write_text(digest + "\n")
    return python


def gate() -> None:
    """In a worker: wait for the orchestrator's turn before each timed unit (only when run interleaved)."""
    if os.environ.get(INTERLEAVE_ENV):
        print(READY, flush=True)
        sys.stdin.readline()


class Worker:
    """One side in a fresh 1-thread process; its stdout lines are echoed, its last line is a JSON object."""

    def __init__(self, argv: list[str], label: str, interleaved: bool = False) -> None:
        self.label, self.stderr = label, tempfile.TemporaryFile("w+")
        env = {**os.environ, **ENV_1_THREAD, **({INTERLEAVE_ENV: "1"} if interleaved else {})}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.result: dict | None = None

    def read_until_ready(self) -> None:
        """Echo lines until the worker waits at its gate, or has printed its result and ended."""
        for line in self.proc.stdout:
            if line.rstrip("\n") == READY:
                return
            if line.startswith("{"):
                self.result = json.loads(line)
            else:
                print(f"  [{self.label}] {line.rstrip()}", flush=True)
        self.finish()

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict:
        if self.proc.wait() != 0 or self.result is None:
            self.stderr.seek(0)
            raise SystemExit(f"{self.label} failed (exit {self.proc.returncode}):\n{self.stderr.read()[-4000:]}")
        return self.result


def run_worker(argv: list[str], label: str) -> dict:
    worker = Worker(argv, label)
    worker.read_until_ready()
    return worker.finish()


def run_interleaved(sides: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """Run the sides' timed units in turn (A, B, A, B, ...), one at a time, each side in its own process.

    On a shared machine the load drifts; alternating makes the drift hit both sides alike, as
    benchmarks/generate.py does. The idle side waits at its gate, so the two never compete for a core.
    """
    workers = {label: Worker(argv, label, interleaved=True) for label, argv in sides.items()}
    for w in workers.values():
        w.read_until_ready()  # set-up done (models loaded), waiting for the first turn
    for _ in range(rounds):
        for w in workers.values():
            w.go()
            w.read_until_ready()  # blocks until this unit has run
    return {label: w.finish() for label, w in workers.items()}


def write_checkpoint(path: Path, layers: int, seed: int) -> None:
    """A random-init GPT-2 (notebook 01's GPT2 and init) in Hugging Face's GPT2LMHeadModel naming."""
    import torch
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    torch.manual_seed(seed)
    model = GPT2(GPT2Config(n_layer=layers))
    torch.save({f"transformer.{k}": v for k, v in model.state_dict().items()}, path)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mib() -> float:
    """Resident set size now (Linux /proc/self/statm: pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def state_mib(model, ref) -> float:
    """The memory no PPO step can avoid: trained weights, their gradients and Adam's two moments, and the reference."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in ref.parameters())
    return (4 * trained + frozen) / 2**20


# ----------------------------------------------------------------------------------------------------------
# our side (runs in the course venv, one process per part)
# ----------------------------------------------------------------------------------------------------------

def load_nb08():
    """Notebook 08 (``rollout``, ``reference_logprobs``, ``ppo_update``, ``PPOConfig``, ...) as a module."""
    from helpers import load_notebook

    if not NB08.is_file():
        raise SystemExit(f"our side is notebook 08's PPO loop, and {NB08.relative_to(ROOT)} is missing")
    return load_notebook(NB08)


def load_policy(s: dict):
    """Notebook 01's GPT2 with the shared random-init weights (the same file the TRL side loads)."""
    import torch
    from minirlhf.tokenizer_gpt2 import GPT2, GPT2Config

    model = GPT2(GPT2Config(n_layer=s["layers"]))
    state = torch.load(s["checkpoint"], mmap=True, weights_only=True)
    model.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()})
    del state
    return model


def ppo_config(nb08, s: dict):
    """Notebook 08's PPOConfig with the benchmark's settings (the TRL side gets the same numbers)."""
    return nb08.PPOConfig(
        seed=s["seed"], batch_size=s["batch"], minibatch_size=s["minibatch"], ppo_epochs=s["epochs"], lr=s["lr"],
        max_new_tokens=s["response"], temperature=1.0, eos_id=50256, init_kl_coef=s["init_kl_coef"],
        adaptive_kl=s["adaptive_kl"], kl_target=s["kl_target"], kl_horizon=s["kl_horizon"],
        whiten_rewards=s["whiten_rewards"], gamma=s["gamma"], lam=s["lam"], clip_eps=s["cliprange"],
        clip_range_value=s["cliprange_value"], vf_coef=s["vf_coef"], ent_coef=0.0,
        max_grad_norm=s["max_grad_norm"], target_kl=None,
    )


def ours_models(nb08, s: dict):
    """Policy + value head (notebook 05, shared trunk, zero-init head), its frozen reference copy, Adam, KL control.

    The optimizer is ``train_ppo``'s: ``torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5, fused=True)``.
    """
    import torch
    from minirlhf.ppo_loss import AdaptiveKLController
    from minirlhf.value_head import PolicyWithValue

    policy = load_policy(s)
    ref = copy.deepcopy(policy).requires_grad_(False).eval()
    model = PolicyWithValue.shared(policy, init="zero")
    optimizer = torch.optim.Adam(model.parameters(), lr=s["lr"], eps=s["adam_eps"], fused=True)
    kl_ctl = AdaptiveKLController(s["init_kl_coef"], s["kl_target"], s["kl_horizon"])
    return model, ref, optimizer, kl_ctl


def rollout_batch(query, response):
    """The batch ``rollout`` would return for these tokens, before its forward pass (no left padding here)."""
    import torch

    input_ids = torch.cat([query, response], dim=1)  # [B, P + R]
    attention_mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": torch.arange(input_ids.shape[1]).expand_as(input_ids).clone(),
            "response_ids": response, "response_mask": torch.ones_like(response)}


def rollout_forward(model, batch: dict, temperature: float) -> dict:
    """Step 3 of notebook 08's ``rollout`` (its one no-grad forward: old log-probs and values), without sampling."""
    import torch
    from minirlhf.tokenizer_gpt2 import logprobs_from_logits

    P = batch["input_ids"].shape[1] - batch["response_ids"].shape[1]
    with torch.no_grad():
        logits, values = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], logits_from=P - 1)
        logprobs = logprobs_from_logits(logits[:, :-1] / temperature, batch["response_ids"])
        m = batch["response_mask"].bool()
        zero = torch.zeros((), dtype=logprobs.dtype)
    return {**batch, "old_logprobs": torch.where(m, logprobs, zero), "values": torch.where(m, values[:, P - 1:-1], zero)}


def ppo_step_ours(nb08, model, ref, optimizer, kl_ctl, batch: dict, scores, cfg, generator) -> dict:
    """What ``PPOTrainer.step`` does, with notebook 08's pieces: ``train_ppo``'s steps 2-5 after the rollout's forward.

    No-grad forward of policy + value (``rollout``'s) and of the reference (``reference_logprobs``), per-token
    rewards, GAE, whitening, ``ppo_update`` (epochs x minibatches of forward/backward/clip/Adam), KL control.
    """
    from minirlhf.gae import compute_gae, masked_whiten, per_token_rewards
    from minirlhf.ppo_loss import mean_response_kl

    batch = rollout_forward(model, batch, cfg.temperature)
    mask = batch["response_mask"]
    ref_logprobs = nb08.reference_logprobs(ref, batch, cfg.temperature)
    rewards = per_token_rewards(scores, batch["old_logprobs"], ref_logprobs, mask, kl_ctl.value)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = compute_gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)
    stats = nb08.ppo_update(model, optimizer, {**batch, "advantages": advantages, "returns": returns}, cfg, generator)
    kl = mean_response_kl(batch["old_logprobs"], ref_logprobs, mask).item()
    kl_ctl.update(kl, cfg.batch_size)
    return {**stats, "kl": kl}


def worker_step(s: dict) -> dict:
    import torch

    nb08 = load_nb08()
    cfg = ppo_config(nb08, s)
    runtime_rss = rss_mib()  # the interpreter, torch and notebook 08 loaded; no model yet
    model, ref, optimizer, kl_ctl = ours_models(nb08, s)
    query, response, scores = make_data(s)
    batch = rollout_batch(query, response)
    # the cross-check with TRL: mean log-prob of the response tokens before any update
    check = float(rollout_forward(model, batch, 1.0)["old_logprobs"].mean())
    generator = torch.Generator().manual_seed(s["seed"])
    wall, cpu = [], []
    for i in range(s["warmup"] + s["repeats"]):
        gate()
        t0, c0 = time.perf_counter(), time.process_time()
        stats = ppo_step_ours(nb08, model, ref, optimizer, kl_ctl, batch, scores, cfg, generator)
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= s["warmup"]:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
        print(f"  ours step {i} ({'warm-up' if i < s['warmup'] else 'timed'}): {t1 - t0:6.2f} s wall, "
              f"{c1 - c0:6.2f} s CPU, loss {stats['loss']:+.4f}, kl {stats['kl']:+.4f}", flush=True)
    return {"wall": wall, "cpu": cpu, "check_logprob_mean": check,
            "runtime_rss_mib": runtime_rss, "state_mib": state_mib(model, ref),
            "impl": "notebook 08: rollout's forward, reference_logprobs, GAE, ppo_update",
            "versions": {"torch": torch.__version__}}


def worker_generate(s: dict) -> dict:
    import torch
    from minirlhf.tokenizer_gpt2 import generate

    policy = load_policy(s).eval()
    query, _, _ = make_data(s)
    mask = torch.ones_like(query)
    gate()
    greedy = generate(policy, query, mask, s["response"], eos_id=None, temperature=0)[0]  # also the warm-up
    g = torch.Generator().manual_seed(s["seed"])
    wall, cpu = [], []
    for _ in range(s["repeats"]):
        gate()
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(policy, query, mask, s["response"], eos_id=None, temperature=1.0, generator=g)[0]
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert out.shape == (s["batch"], s["query"] + s["response"]), out.shape
    return {"wall": wall, "cpu": cpu, "greedy_tokens": greedy[:, s["query"]:].tolist()}


def step_matmuls(s: dict) -> dict[tuple[int, int, int], int]:
    """Every weight matrix product of one PPO step, as ``{(m, k, n): count}`` for ``[m, k] @ [k, n]``.

    The no-grad forwards of policy and reference over the batch, then per minibatch the forward and the two
    backward products of each linear layer (dX = dY W^T, dW = X^T dY), LM head included; attention's own
    products (T x T per head) are left out, they are small at T = 64. Both sides must do all of these.
    """
    C, V, L = 768, 50257, s["layers"]
    B, T, M = s["batch"], s["query"] + s["response"], s["minibatch"]
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * L
    counts: dict[tuple[int, int, int], int] = {}

    def add(shape: tuple[int, int, int], n: int) -> None:
        counts[shape] = counts.get(shape, 0) + n

    for k, n in linears:
        add((B * T, k, n), 2)  # policy and reference, no grad
        add((M * T, k, n), s["epochs"] * (B // M))  # forward with grad
        add((M * T, n, k), s["epochs"] * (B // M))  # dX
        add((k, M * T, n), s["epochs"] * (B // M))  # dW
    add((B * T, C, V), 2)
    add((M * T, C, V), s["epochs"] * (B // M))
    add((M * T, V, C), s["epochs"] * (B // M))
    add((V, M * T, C), s["epochs"] * (B // M))
    return counts


def worker_floor(s: dict) -> dict:
    """The matmul floor: CPU time of ``step_matmuls`` alone (preallocated outputs, best of 3 per shape).

    No implementation of the same step in fp32 on one thread can be faster than this; TRL's time divided by it
    is the largest speedup any rewrite could reach.
    """
    import torch

    total, flops = 0.0, 0
    for (m, k, n), count in step_matmuls(s).items():
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm-up
        best = float("inf")
        for _ in range(3):
            c = time.process_time()
            torch.mm(a, b, out=out)
            best = min(best, time.process_time() - c)
        total += best * count
        flops += 2 * m * k * n * count
    return {"seconds": total, "gflop": flops / 1e9}


def worker_iteration(s: dict) -> dict:
    """Whole PPO iterations of notebook 08 (``train_ppo``'s body), timed by phase; the memory plan's peak RSS.

    Models in memory, all fp32: policy + value head (shared trunk) with Adam, the frozen reference, the frozen
    reward model (notebook 04's ``RewardModel``; its trunk holds the same random-init weights).
    """
    import torch
    from minirlhf.gae import compute_gae, masked_whiten, per_token_rewards
    from minirlhf.ppo_loss import mean_response_kl
    from minirlhf.reward_model import RewardModel

    nb08 = load_nb08()
    cfg = ppo_config(nb08, s)
    model, ref, optimizer, kl_ctl = ours_models(nb08, s)
    reward_model = RewardModel.from_policy(ref).requires_grad_(False).eval()
    query, _, _ = make_data(s)
    prompt_mask = torch.ones_like(query)
    generator = torch.Generator().manual_seed(s["seed"])
    phases: list[dict[str, float]] = []
    for i in range(s["warmup"] + s["repeats"]):
        t = {}
        c = time.process_time()
        batch = nb08.rollout(model, query, prompt_mask, cfg, generator)
        t["generate"], c = time.process_time() - c, time.process_time()
        scores = nb08.score_responses(reward_model, batch, (1.0, 0.0), cfg.eos_penalty, cfg.eos_id)
        t["score"], c = time.process_time() - c, time.process_time()
        ref_logprobs = nb08.reference_logprobs(ref, batch, cfg.temperature)
        t["ref"], c = time.process_time() - c, time.process_time()
        mask = batch["response_mask"]
        rewards = per_token_rewards(scores, batch["old_logprobs"], ref_logprobs, mask, kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        nb08.ppo_update(model, optimizer, {**batch, "advantages": advantages, "returns": returns}, cfg, generator)
        kl_ctl.update(mean_response_kl(batch["old_logprobs"], ref_logprobs, mask).item(), cfg.batch_size)
        t["update"] = time.process_time() - c
        print(f"  ours iteration {i} ({'warm-up' if i < s['warmup'] else 'timed'}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in t.items()) + f" (CPU s); response length "
              f"{float(mask.sum(1).float().mean()):.1f}", flush=True)
        if i >= s["warmup"]:
            phases.append(t)
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    return {"phases": med, "total": sum(med.values()),
            "models": "policy+value head (shared trunk, Adam), frozen reference, frozen reward model; fp32"}


# ----------------------------------------------------------------------------------------------------------
# the orchestrator
# ----------------------------------------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def settings_from_args(args: argparse.Namespace, checkpoint: Path) -> dict:
    return {
        "batch": args.batch, "query": args.query, "response": args.response, "minibatch": args.minibatch,
        "epochs": args.epochs, "lr": args.lr, "adam_eps": 1e-5, "adaptive_kl": True, "init_kl_coef": 0.1,
        "kl_target": 6.0, "kl_horizon": 10000.0, "whiten_rewards": True, "gamma": 1.0, "lam": 0.95,
        "cliprange": 0.2, "cliprange_value": 0.2,
        "vf_coef": 0.1, "max_grad_norm": args.max_grad_norm, "seed": 0, "layers": args.layers,
        "warmup": args.warmup, "repeats": args.repeats, "threads": 1, "checkpoint": str(checkpoint),
        "dtype": "float32", "dropout": 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 layers, 1 warm-up + 1 timed step")
    parser.add_argument("--only", choices=["step", "generate", "iteration"], action="append",
                        help="run only these parts (repeatable); default: all")
    parser.add_argument("--layers", type=int, default=12, help="n_layer (12 = GPT-2 small)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--response", type=int, default=48)
    parser.add_argument("--minibatch", type=int, default=4, help="PPO minibatch size (TRL's mini_batch_size)")
    parser.add_argument("--epochs", type=int, default=4, help="ppo_epochs")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (notebook 08's default)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps; the median counts")
    parser.add_argument("--live-rss", action="store_true",
                        help="glibc returns every block >= 64 KiB to the OS on free, so peak RSS ~ peak live memory "
                             "(default: glibc's usual heap, whose freed blocks stay resident; slower)")
    parser.add_argument("--rebuild-peer-venv", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # a child process: one side, one part
        import torch

        s = json.loads(args.settings)
        torch.set_num_threads(s["threads"])
        torch.manual_seed(s["seed"])
        workers = {"step": worker_step, "floor": worker_floor, "generate": worker_generate, "iteration": worker_iteration}
        result = workers[args.worker](s)
        result["peak_rss_mib"] = peak_rss_mib()
        result["torch_threads"] = torch.get_num_threads()
        print(json.dumps(result))
        return

    if args.quick:
        args.layers, args.warmup, args.repeats = 2, 1, 1
    parts = args.only or ["step", "generate", "iteration"]
    if args.live_rss:
        ENV_1_THREAD.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    peer_python = ensure_peer_venv(args.rebuild_peer_venv)
    out: dict = {"benchmark": "ppo_step", "weights": WEIGHTS_NOTE}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppo_step_") as tmp:
        checkpoint = Path(tmp) / "gpt2_random_init.pt"
        write_checkpoint(checkpoint, args.layers, seed=0)
        s = settings_from_args(args, checkpoint)
        ours_cmd = [sys.executable, str(Path(__file__).resolve()), "--settings", json.dumps(s), "--worker"]
        peer_cmd = [str(peer_python), str(PEER_SCRIPT)]
        print(f"GPT-2 architecture n_layer={s['layers']}, n_embd=768, vocab 50257, {WEIGHTS_NOTE.split(':')[0]}; "
              f"batch {s['batch']}, query {s['query']} + response {s['response']} tokens, minibatch {s['minibatch']}, "
              f"ppo_epochs {s['epochs']}, Adam lr {s['lr']}, fp32, 1 thread; {s['warmup']} warm-up + "
              f"{s['repeats']} timed; load average {os.getloadavg()[0]:.2f}", flush=True)

        if "step" in parts:
            print("step: ours and TRL's PPOTrainer.step, in turn ...", flush=True)
            res = run_interleaved({"ours step": ours_cmd + ["step"], "trl step": peer_cmd + ["step", json.dumps(s)]},
                                  s["warmup"] + s["repeats"])
            ours, trl = res["ours step"], res["trl step"]
            floor = run_worker(ours_cmd + ["floor"], "matmul floor")
            o, t = median(ours["cpu"]), median(trl["cpu"])
            out.update({
                "ours_seconds_per_step": o, "trl_seconds_per_step": t, "speedup": t / o,
                "ours_peak_rss_mb": ours["peak_rss_mib"], "trl_peak_rss_mb": trl["peak_rss_mib"],
                "memory_ratio": ours["peak_rss_mib"] / trl["peak_rss_mib"],
                "ours_wall_seconds_per_step": median(ours["wall"]), "trl_wall_seconds_per_step": median(trl["wall"]),
                "matmul_floor_seconds_per_step": floor["seconds"], "matmul_gflop_per_step": floor["gflop"],
                "max_possible_speedup": t / floor["seconds"],
                "memory_floor_mib": ours["runtime_rss_mib"] + ours["state_mib"],
                "min_possible_memory_ratio": (ours["runtime_rss_mib"] + ours["state_mib"]) / trl["peak_rss_mib"],
                "ours_step_impl": ours["impl"], "trl_phases_seconds": trl["phases"],
                "check_logprob_mean": {"ours": ours["check_logprob_mean"], "trl": trl["check_logprob_mean"]},
                "peer_versions": trl["versions"],
            })
            print(f"PPO step (median of {s['repeats']}, CPU s): ours {o:6.2f} s   TRL {t:6.2f} s   "
                  f"speedup {t / o:.2f}x (target >= {TARGETS['speedup']}x)")
            print(f"  wall-clock: ours {median(ours['wall']):6.2f} s   TRL {median(trl['wall']):6.2f} s")
            print(f"  matmul floor (the {floor['gflop']:.0f} GFLOP of weight products both sides must do, nothing else): "
                  f"{floor['seconds']:6.2f} s, so at most {t / floor['seconds']:.2f}x faster than TRL is possible; "
                  f"matmuls are {floor['seconds'] / o:.0%} of ours, {floor['seconds'] / t:.0%} of TRL's step")
            print(f"  peak RSS: ours {ours['peak_rss_mib']:7.0f} MiB   TRL {trl['peak_rss_mib']:7.0f} MiB   "
                  f"ratio {out['memory_ratio']:.2f} (target <= {TARGETS['memory_ratio']})")
            print(f"  memory floor: {ours['runtime_rss_mib']:.0f} MiB of Python + torch before any model, + "
                  f"{ours['state_mib']:.0f} MiB of weights, gradients, Adam's two moments and the frozen reference = "
                  f"{out['memory_floor_mib']:.0f} MiB, so the ratio cannot go below "
                  f"{out['min_possible_memory_ratio']:.2f} without changing what is stored (precision, frozen layers)")
            print(f"  ours = {ours['impl']}; TRL phases (median s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in trl["phases"].items()))
            print(f"  same function? mean response log-prob before the update: ours {ours['check_logprob_mean']:.6f}, "
                  f"TRL {trl['check_logprob_mean']:.6f}")

        if "generate" in parts:
            print("generate: ours and Hugging Face generate, in turn ...", flush=True)
            res = run_interleaved({"ours generate": ours_cmd + ["generate"],
                                   "hf generate": peer_cmd + ["generate", json.dumps(s)]}, 1 + s["repeats"])
            ours, hf = res["ours generate"], res["hf generate"]
            o, h = median(ours["cpu"]), median(hf["cpu"])
            out["generate"] = {
                "ours_seconds": o, "hf_seconds": h, "speedup": h / o,
                "ours_wall_seconds": median(ours["wall"]), "hf_wall_seconds": median(hf["wall"]),
                "ours_peak_rss_mb": ours["peak_rss_mib"], "hf_peak_rss_mb": hf["peak_rss_mib"],
                "greedy_tokens_identical": ours["greedy_tokens"] == hf["greedy_tokens"],
                "sampling": "temperature 1, no top-k/top-p, EOS disabled", "hf": "transformers 4.45.2 (TRL's stack)",
            }
            g = out["generate"]
            print(f"rollout generation ({s['batch']} x {s['response']} new tokens after {s['query']}, sampling, "
                  f"median CPU s): ours {o:6.2f} s   HF generate {h:6.2f} s   speedup {h / o:.2f}x; "
                  f"greedy tokens identical: {g['greedy_tokens_identical']}")

        if "iteration" in parts:
            print("iteration: ours ...", flush=True)
            it = run_worker(ours_cmd + ["iteration"], "ours iteration")
            it["target_peak_rss_mib"] = TARGETS["iteration_peak_rss_mib"]
            out["iteration"] = it
            print(f"whole PPO iteration (median CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in it["phases"].items())
                  + f"; total {it['total']:.2f} s")
            print(f"  memory plan (policy+value, reference, reward model, Adam; fp32): peak RSS {it['peak_rss_mib']:.0f} "
                  f"MiB (target <= {TARGETS['iteration_peak_rss_mib']:.0f} MiB)")

    out["settings"] = {k: v for k, v in s.items() if k != "checkpoint"}
    out["units"] = "seconds = median process CPU seconds (1 thread); *_mb = MiB (ru_maxrss of that side's process)"
    out["malloc"] = "live-rss (MALLOC_MMAP_THRESHOLD_=65536)" if args.live_rss else "glibc default"
    out["targets"] = TARGETS
    out["targets_met"] = {k: v for k, v in {
        "speedup": out["speedup"] >= TARGETS["speedup"] if "speedup" in out else None,
        "memory_ratio": out["memory_ratio"] <= TARGETS["memory_ratio"] if "memory_ratio" in out else None,
        "iteration_peak_rss_mib": (out["iteration"]["peak_rss_mib"] <= TARGETS["iteration_peak_rss_mib"]
                                   if "iteration" in out else None),
    }.items() if v is not None}
    out["seconds_total"] = time.perf_counter() - started
    out["load_average"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
