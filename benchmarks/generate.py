"""Greedy generation speed: notebook 01's KV-cache ``generate`` vs Hugging Face ``generate``.

Both models hold the SAME weights: a random-init GPT-2 small (124M) ``GPT2LMHeadModel`` is
saved with ``save_pretrained`` and loaded with ``load_gpt2_checkpoint``. Same batch, prompt
length and number of new tokens (greedy, EOS disabled so nobody stops early), same thread
count, CPU, float32. One warm-up each, then ``--repeats`` interleaved runs; best time counts.

    .venv/bin/python benchmarks/generate.py [--batch 4 --prompt 32 --new 64 --threads 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import load_notebook  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "01_tokenizer_gpt2" / "01_tokenizer_gpt2.ipynb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12, help="n_layer (12 = GPT-2 small)")
    args = parser.parse_args()

    import transformers
    from transformers.utils import logging as hf_logging

    transformers.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    nb = load_notebook(NOTEBOOK)

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=args.layers)).eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(tmp, safe_serialization=True)
        ours = nb.load_gpt2_checkpoint(tmp)
    eos = hf.config.eos_token_id

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (args.batch, args.prompt), generator=g)
    mask = torch.ones_like(ids)
    # left-pad the second half of the batch a little, as real prompts are
    for b in range(args.batch // 2, args.batch):
        mask[b, : 1 + b] = 0
        ids[b, : 1 + b] = eos

    def run_hf() -> torch.Tensor:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hf.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                               do_sample=False, pad_token_id=eos, eos_token_id=None)

    def run_ours() -> torch.Tensor:
        return nb.generate(ours, ids, mask, args.new, eos_id=None, temperature=0)[0]

    # Lower bound for any fp32 implementation: the weight matmuls of every decode step (each step must
    # stream all ~500 MB of weights from memory at batch 4) plus one prefill, nothing else.
    blocks = [(b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight) for b in hf.transformer.h]
    wte = hf.transformer.wte.weight

    def run_floor() -> None:
        with torch.no_grad():
            for t in [args.prompt] + [1] * (args.new - 1):
                x = torch.zeros(args.batch * t, 768)
                for w_attn, w_proj, w_fc, w_out in blocks:
                    x @ w_attn
                    x @ w_proj
                    x = (x @ w_fc) @ w_out
                torch.nn.functional.linear(x[: args.batch], wte)

    runs = {"ours (KV cache)": run_ours, "transformers": run_hf, "matmul floor": run_floor}
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up (and the tokens, compared below)
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)

    n_tokens = args.batch * args.new
    print(f"GPT-2 shape: n_layer={args.layers}, n_embd=768, vocab=50257; batch {args.batch}, prompt {args.prompt}, "
          f"{args.new} new tokens, greedy, float32, CPU, torch threads {args.threads}, best of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:16s} {t:7.3f} s   {n_tokens / t:8.1f} tokens/s")
    ratio = best["transformers"] / best["ours (KV cache)"]
    print(f"  speed ratio ours / transformers: {ratio:.2f}x   (at most {best['transformers'] / best['matmul floor']:.2f}x "
          "is possible: transformers' time / the matmul floor)")
    same = torch.equal(outputs["ours (KV cache)"], outputs["transformers"])
    print(f"  identical greedy tokens: {same}")


if __name__ == "__main__":
    main()
