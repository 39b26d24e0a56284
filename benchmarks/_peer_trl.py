"""The TRL side of benchmarks/ppo_step.py: runs INSIDE the peer venv (benchmarks/.peer-venv/).

Not imported by the course: it needs trl 0.11.4 (the last release with the classic ``PPOTrainer``) and
transformers 4.45.2, pinned in benchmarks/peer-requirements.txt. ppo_step.py starts it as

    benchmarks/.peer-venv/bin/python benchmarks/_peer_trl.py {step|generate} '<settings JSON>'

and reads the JSON object on its last stdout line. Each call is its own process, so ``ru_maxrss`` at the
end is this side's peak RSS and nothing else's.

* ``step``: ``PPOTrainer.step(queries, responses, scores)`` with the settings given (GPT-2 architecture,
  weights from the checkpoint ppo_step.py wrote, dropout off, value head zero-initialised like notebook
  05's default), one warm-up step, then ``repeats`` timed steps.
* ``generate``: Hugging Face ``generate`` (the sampler TRL's ``PPOTrainer.generate`` calls) on the same
  shapes: sampling at temperature 1, no top-k/top-p, EOS disabled; plus one greedy run whose tokens
  ppo_step.py compares with ours.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import time
import warnings


def gate() -> None:
    """Wait for ppo_step.py's turn before each timed unit when it runs the two sides interleaved."""
    if os.environ.get("PPO_STEP_INTERLEAVED"):
        print("@ready", flush=True)
        sys.stdin.readline()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_hf_model(s: dict):
    """GPT2LMHeadModel of GPT-2's architecture (n_layer from the settings), dropout off, with the shared weights."""
    import torch
    import transformers

    config = transformers.GPT2Config(n_layer=s["layers"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     summary_first_dropout=0.0)
    config.summary_dropout_prob = 0.0  # TRL's ValueHead reads this: no dropout before the value head
    model = transformers.GPT2LMHeadModel(config)
    state = torch.load(s["checkpoint"], mmap=True, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head.weight is tied to wte (not in the file); the causal-mask buffers are not persistent
    if unexpected or any(not k.startswith("lm_head.") for k in missing):
        raise SystemExit(f"checkpoint does not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    del state
    return model


def stand_in_tokenizer():
    """PPOTrainer insists on a tokenizer, but only pads with it: every row here has the same length.

    A one-word WordLevel tokenizer (<|endoftext|>, also the pad token, as in TRL's examples) stands in for
    GPT-2's BPE, whose files are not reachable here.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_data(s: dict):
    """The same query/response tokens and scores as ours (a torch.Generator seeded from the settings)."""
    import torch

    g = torch.Generator().manual_seed(s["seed"])
    query = torch.randint(0, 50000, (s["batch"], s["query"]), generator=g)
    response = torch.randint(0, 50000, (s["batch"], s["response"]), generator=g)  # no EOS: full-length rows
    scores = torch.randn(s["batch"], generator=g)
    return query, response, scores


def run_step(s: dict) -> dict:
    import numpy as np
    import torch
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    hf = load_hf_model(s)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(hf, summary_dropout_prob=0.0)
    with torch.no_grad():  # notebook 05's default init="zero" (TRL's default is random; the cost is the same)
        model.v_head.summary.weight.zero_()
        model.v_head.summary.bias.zero_()
    config = PPOConfig(
        batch_size=s["batch"], mini_batch_size=s["minibatch"], gradient_accumulation_steps=1,
        ppo_epochs=s["epochs"], learning_rate=s["lr"],
        adap_kl_ctrl=s["adaptive_kl"], init_kl_coef=s["init_kl_coef"], target=s["kl_target"], horizon=s["kl_horizon"],
        gamma=s["gamma"], lam=s["lam"], cliprange=s["cliprange"], cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"], max_grad_norm=s["max_grad_norm"], early_stopping=False,
        whiten_rewards=s["whiten_rewards"],
        kl_penalty="kl", seed=s["seed"], exp_name="ppo_step_benchmark",
    )
    # the same optimizer as ours (notebook 08's train_ppo builds Adam(lr, eps=1e-5)); TRL's own is Adam(lr)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s["lr"], eps=s["adam_eps"])
    trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=stand_in_tokenizer(),
                         optimizer=optimizer)  # ref_model=None: TRL deep-copies the policy, its standard path
    np.random.seed(s["seed"])
    query, response, scores = make_data(s)
    queries, responses, score_list = list(query), list(response), list(scores)

    # cross-check that both sides compute the same function: mean log-prob of the response tokens before any update
    with torch.no_grad():
        ids = torch.cat([query, response], 1)
        logits, _, _ = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        lp = torch.log_softmax(logits[:, s["query"] - 1:-1], -1).gather(-1, response[..., None]).squeeze(-1)
        check_logprob_mean = float(lp.mean())
        del logits, lp

    wall, cpu, phases = [], [], []
    for i in range(s["warmup"] + s["repeats"]):
        gate()
        t0, c0 = time.perf_counter(), time.process_time()
        stats = trainer.step(queries, responses, score_list)
        t1, c1 = time.perf_counter(), time.process_time()
        if i >= s["warmup"]:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
            phases.append({k.split("/")[-1]: float(v) for k, v in stats.items() if k.startswith("time/ppo/")})
        print(f"  trl step {i} ({'warm-up' if i < s['warmup'] else 'timed'}): {t1 - t0:6.2f} s wall, "
              f"{c1 - c0:6.2f} s CPU, loss {float(stats['ppo/loss/total']):+.4f}, kl {float(stats['objective/kl']):+.4f}",
              flush=True)
    return {
        "wall": wall, "cpu": cpu,
        "phases": {k: statistics.median(p[k] for p in phases) for k in phases[0]} if phases else {},
        "check_logprob_mean": check_logprob_mean,
        "last_stats": {k: float(stats[k]) for k in ("ppo/loss/policy", "ppo/loss/value", "ppo/policy/clipfrac",
                                                    "ppo/policy/approxkl", "objective/kl")},
        "attn_implementation": hf.config._attn_implementation,
        "versions": versions(),
    }


def run_generate(s: dict) -> dict:
    import torch

    model = load_hf_model(s).eval()
    query, _, _ = make_data(s)
    mask = torch.ones_like(query)
    eos = 50256

    def sample(do_sample: bool) -> torch.Tensor:
        with torch.no_grad():
            # TRL's recommended rollout kwargs (top_k 0, top_p 1, do_sample), EOS disabled: every row runs to the end
            return model.generate(query, attention_mask=mask, max_new_tokens=s["response"], do_sample=do_sample,
                                  top_k=0, top_p=1.0, temperature=1.0 if do_sample else None,
                                  pad_token_id=eos, eos_token_id=None)

    gate()
    greedy = sample(False)  # also the warm-up
    wall, cpu = [], []
    for _ in range(s["repeats"]):
        gate()
        t0, c0 = time.perf_counter(), time.process_time()
        out = sample(True)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert out.shape == (s["batch"], s["query"] + s["response"]), out.shape
    return {"wall": wall, "cpu": cpu, "greedy_tokens": greedy[:, s["query"]:].tolist(), "versions": versions()}


def versions() -> dict:
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def main() -> None:
    mode, s = sys.argv[1], json.loads(sys.argv[2])
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    import transformers

    transformers.logging.set_verbosity_error()
    result = {"step": run_step, "generate": run_generate}[mode](s)
    result["peak_rss_mib"] = peak_rss_mib()
    result["torch_threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
