"""Notebook 01: the test cells' bar -- points follow the math.

The reference passes every test cell (writing nothing to stderr); each plausible wrong implementation of a
graded function fails the cell that grades its math; a correct implementation that checks no input at all
loses only the 1-point validation cells (``<id>_errors``); and ``causal_self_attention`` is graded with
PyTorch's fused attention kernel switched off. The reference ``GPT2`` runs its blocks with that kernel (the
trained artifacts were made with it): it must agree with the plain composition of the graded functions.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cells import failing, run_silently, run_test_cells, surviving_variants, validation_cell_problems
from helpers import load_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_tokenizer_gpt2" / "01_tokenizer_gpt2.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def define(nb, source: str) -> dict:
    """Run ``source`` in a copy of the notebook's namespace (as a student's cell would) and return the names it
    defined: they see each other and the notebook's other definitions."""
    namespace = dict(vars(nb))
    before = dict(namespace)
    exec(compile(textwrap.dedent(source), "<student>", "exec"), namespace)
    return {k: v for k, v in namespace.items() if k not in before or before[k] is not v}


# ----------------------------------------------------------------------------- correct math, no input checks

NO_VALIDATION = '''
def pretokenize(text):
    L, N, S = LETTER, NUMBER, SPACE
    return re.findall(rf"'(?:s|t|re|ve|m|ll|d)| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+", text)


def bpe_merge(piece, ranks):
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def encode(text, ranks):
    ids = []
    for k, chunk in enumerate(text.split(EOT_TOKEN)):
        if k:
            ids.append(EOT_ID)
        for piece in pretokenize(chunk):
            ids += bpe_merge(piece.encode("utf-8"), ranks)
    return ids


def decode(ids, ranks):
    inverse = {r: t for t, r in ranks.items()}
    inverse[EOT_ID] = EOT_TOKEN.encode()
    return b"".join(inverse[int(i)] for i in ids).decode("utf-8", errors="replace")


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def causal_self_attention(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attention_mask=None, past_kv=None):
    B, T, C = x.shape
    D = C // n_head
    q, k, v = (x @ c_attn_w + c_attn_b).chunk(3, dim=-1)
    q, k, v = [t.reshape(B, T, n_head, D).permute(0, 2, 1, 3) for t in (q, k, v)]
    if past_kv is not None:
        k, v = torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2)
    S = k.shape[2]
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    if attention_mask is not None:
        itself = torch.zeros(T, S, dtype=torch.bool)
        itself[torch.arange(T), torch.arange(S - T, S)] = True
        allowed = (allowed & attention_mask.bool()[:, None, None, :]) | itself
    att = (q @ k.transpose(-1, -2)) * D ** -0.5
    att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
    y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ c_proj_w + c_proj_b, (k, v)


def mlp(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return gelu(x @ c_fc_w + c_fc_b) @ c_proj_w + c_proj_b


def transformer_block(x, params, n_head, attention_mask=None, past_kv=None, eps=1e-5):
    p = params
    a, kv = causal_self_attention(layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], eps), p["attn.c_attn.weight"],
                                  p["attn.c_attn.bias"], p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head,
                                  attention_mask, past_kv)
    x = x + a
    return x + mlp(layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], eps), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                   p["mlp.c_proj.weight"], p["mlp.c_proj.bias"]), kv


class GPT2(GPT2):
    def hidden_states_cached(self, input_ids, attention_mask=None, position_ids=None, past_kv=None):
        cfg = self.config
        B, T = input_ids.shape
        P = 0 if past_kv is None else past_kv[0][0].shape[2]
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(P, P + T).expand(B, T)
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]
        x = self.wte(input_ids) + self.wpe(position_ids)
        present = []
        for i, block in enumerate(self.h):
            x, kv = transformer_block(x, block.params(), cfg.n_head, attention_mask,
                                      None if past_kv is None else past_kv[i], cfg.layer_norm_eps)
            present.append(kv)
        return layer_norm(x, self.ln_f.weight, self.ln_f.bias, cfg.layer_norm_eps), present

    def lm_head(self, h):
        return h @ self.wte.weight.T


def read_safetensors(path):
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        flat = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"]).clone()
    return out


def load_gpt2_checkpoint(path, config=None, *, dtype=torch.float32):
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state = {}
    for name, t in read_safetensors(path).items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        state[name] = t
    if config is None:
        extra = json.loads((path.parent / "config.json").read_text()) if (path.parent / "config.json").is_file() else {}
        V, C = state["wte.weight"].shape
        n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
        config = GPT2Config(vocab_size=V, n_positions=state["wpe.weight"].shape[0], n_embd=C, n_layer=n_layer,
                            n_head=extra.get("n_head", 12), layer_norm_eps=extra.get("layer_norm_epsilon", 1e-5))
    model = GPT2(config).to(dtype)
    model.load_state_dict(state)  # copies into the parameters, converting F16/BF16
    return model.eval()


def logprobs_from_logits(logits, labels):
    return torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    z = logits / temperature
    if top_k is not None:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None:
        p = z.softmax(-1)
        sp, idx = p.sort(-1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return torch.multinomial(z.softmax(-1), 1, generator=generator)[:, 0]


def generate(model, input_ids, attention_mask, max_new_tokens, eos_id=50256, temperature=1.0, top_k=None,
             top_p=None, generator=None):
    with torch.no_grad():
        mask = attention_mask
        h, cache = model.hidden_states_cached(input_ids, mask)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        toks, alive = [], []
        for step in range(max_new_tokens):
            tok = sample_next_token(model.lm_head(h[:, -1]), temperature, top_k, top_p, generator)
            alive.append(~done)
            if eos_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_id), tok)
                done = done | (tok == eos_id)
            toks.append(tok)
            if step + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            h, cache = model.hidden_states_cached(tok[:, None], mask, past_kv=cache)
        return torch.cat([input_ids, torch.stack(toks, 1)], 1), torch.stack(alive, 1).to(attention_mask.dtype)
'''


def test_reference_passes_every_test_cell_silently(nb):
    results, stderr, warned = run_silently(NOTEBOOK, nb)
    assert failing(results) == {}
    assert stderr == "", f"test cells wrote to stderr (nbgrader gives them 0): {stderr[:300]}"
    assert not warned, warned


def test_correct_math_without_validation_loses_only_the_validation_cells(nb):
    """Points follow the math: no input checks at all still earns every non-validation cell."""
    replace = define(nb, NO_VALIDATION)
    assert {"pretokenize", "decode", "GPT2", "generate", "load_gpt2_checkpoint"} <= set(replace)
    failed = failing(run_test_cells(NOTEBOOK, replace, module=nb))
    assert failed, "the validation cells must notice the missing checks"
    assert all(cell.endswith("_errors") for cell in failed), failed
    assert set(failed) == {"test_decode_errors", "test_gpt2_model_errors", "test_read_safetensors_errors",
                           "test_load_gpt2_checkpoint_errors", "test_logprobs_from_logits_errors",
                           "test_sample_next_token_errors", "test_generate_errors"}, failed


def test_every_validation_cell_has_a_math_twin_and_one_point():
    assert validation_cell_problems(NOTEBOOK) == []


# ----------------------------------------------------------------------------- wrong math, each caught

def _pretokenize(pattern: str) -> str:
    return f'''
def pretokenize(text):
    L, N, S = LETTER, NUMBER, SPACE
    return re.findall(rf"{pattern}", text)
'''


def _gpt2(body: str) -> str:
    return "class GPT2(GPT2):\n    def hidden_states_cached(self, input_ids, attention_mask=None, position_ids=None, " \
           "past_kv=None):\n" + textwrap.indent(textwrap.dedent(body), " " * 8)


_GPT2_POSITIONS = '''
cfg = self.config
B, T = input_ids.shape
P = 0 if past_kv is None else past_kv[0][0].shape[2]
if position_ids is None:
    if attention_mask is None:
        position_ids = torch.arange(P, P + T).expand(B, T)
    else:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]
'''
_GPT2_BLOCKS = '''
x = self.wte(input_ids) + self.wpe(position_ids)
present = []
for i, block in enumerate(self.h):
    x, kv = transformer_block(x, block.params(), cfg.n_head, attention_mask,
                              None if past_kv is None else past_kv[i], cfg.layer_norm_eps)
    present.append(kv)
'''
_GPT2_RETURN = "return layer_norm(x, self.ln_f.weight, self.ln_f.bias, cfg.layer_norm_eps), present\n"


def _attention(*, scale="D ** -0.5", causal=True, pad_keys=True, itself=True, heads="t.reshape(B, T, n_head, D)"
               ".permute(0, 2, 1, 3)", offset="S - T", softmax_dim=-1, new_kv_only=False, sdpa=False) -> str:
    core = (f"y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)" if sdpa else
            f"att = (q @ k.transpose(-1, -2)) * {scale}\n"
            f"    att = att.masked_fill(~allowed, float('-inf')).softmax({softmax_dim})\n"
            f"    y = att @ v")
    return f'''
def causal_self_attention(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, attention_mask=None, past_kv=None):
    B, T, C = x.shape
    D = C // n_head
    q, k, v = (x @ c_attn_w + c_attn_b).chunk(3, dim=-1)
    q, k, v = [{heads} for t in (q, k, v)]
    new_kv = (k, v)
    if past_kv is not None:
        k, v = torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2)
    S = k.shape[2]
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal={offset}) if {causal} else torch.ones(T, S, dtype=torch.bool)
    if attention_mask is not None:
        diag = torch.zeros(T, S, dtype=torch.bool)
        diag[torch.arange(T), torch.arange(S - T, S)] = True
        allowed = allowed & attention_mask.bool()[:, None, None, :] if {pad_keys} else allowed & torch.ones(B, 1, 1, S, dtype=torch.bool)
        allowed = allowed | diag if {itself} else allowed
    {core}
    y = y.permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ c_proj_w + c_proj_b, (new_kv if {new_kv_only} else (k, v))
'''


def _block(*, post_ln=False, ln1_twice=False, mlp_residual=True, pass_eps=True) -> str:
    eps = "eps" if pass_eps else "1e-5"
    ln2 = '"ln_1.weight"], p["ln_1.bias"]' if ln1_twice else '"ln_2.weight"], p["ln_2.bias"]'
    if post_ln:
        return f'''
def transformer_block(x, params, n_head, attention_mask=None, past_kv=None, eps=1e-5):
    p = params
    a, kv = causal_self_attention(x, p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"],
                                  p["attn.c_proj.bias"], n_head, attention_mask, past_kv)
    x = layer_norm(x + a, p["ln_1.weight"], p["ln_1.bias"], {eps})
    m = mlp(x, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    return layer_norm(x + m, p["ln_2.weight"], p["ln_2.bias"], {eps}), kv
'''
    return f'''
def transformer_block(x, params, n_head, attention_mask=None, past_kv=None, eps=1e-5):
    p = params
    a, kv = causal_self_attention(layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], {eps}), p["attn.c_attn.weight"],
                                  p["attn.c_attn.bias"], p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head,
                                  attention_mask, past_kv)
    x = x + a
    m = mlp(layer_norm(x, p[{ln2}, {eps}), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], p["mlp.c_proj.weight"],
            p["mlp.c_proj.bias"])
    return (x + m if {mlp_residual} else m), kv
'''


def _sampler(*, nucleus="(sp.cumsum(-1) - sp) >= top_p", before_temperature=False, use_top_k=True,
             temperature="logits / temperature") -> str:
    return f'''
def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    z = logits if {before_temperature} else {temperature}
    if top_k is not None and {use_top_k}:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sp, idx = z.softmax(-1).sort(-1, descending=True)
        drop = {nucleus}
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    if {before_temperature}:
        z = z / temperature
    return torch.multinomial(z.softmax(-1), 1, generator=generator)[:, 0]
'''


def _generator(*, cache=True, filler=True, eos_in_mask=True, early_stop=True) -> str:
    step = ("h, cache = model.hidden_states_cached(tok[:, None], mask, past_kv=cache)" if cache else
            "h, _ = model.hidden_states_cached(torch.cat([input_ids, torch.stack(toks, 1)], 1), mask)")
    return f'''
def generate(model, input_ids, attention_mask, max_new_tokens, eos_id=50256, temperature=1.0, top_k=None,
             top_p=None, generator=None):
    with torch.no_grad():
        mask = attention_mask
        h, cache = model.hidden_states_cached(input_ids, mask)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        toks, alive = [], []
        for step in range(max_new_tokens):
            tok = sample_next_token(model.lm_head(h[:, -1]), temperature, top_k, top_p, generator)
            if eos_id is not None and {filler}:
                tok = torch.where(done, torch.full_like(tok, eos_id), tok)
            if eos_id is not None:
                now = done | (tok == eos_id)
                alive.append(~done if {eos_in_mask} else ~now)
                done = now
            else:
                alive.append(~done)
            toks.append(tok)
            if step + 1 == max_new_tokens or ({early_stop} and eos_id is not None and bool(done.all())):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            {step}
        return torch.cat([input_ids, torch.stack(toks, 1)], 1), torch.stack(alive, 1).to(attention_mask.dtype)
'''


def wrong_variants(nb):
    """(description, {name: wrong definition}, cell that must fail)."""
    P = "'s|'t|'re|'ve|'m|'ll|'d"
    good_tail = r" ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    variants = [
        ("whitespace runs taken whole (no lookahead)",
         _pretokenize(P + r"| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+"), "test_pretokenize"),
        ("Python's \\s (takes \\x1c-\\x1f as whitespace)",
         _pretokenize(P + r"| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+"), "test_pretokenize"),
        ("contractions of any case", _pretokenize("'(?i:s|t|re|ve|m|ll|d)|" + good_tail), "test_pretokenize"),
        ("letters as \\w (digits and _ too)", _pretokenize(P + r"| ?\w+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"),
         "test_pretokenize"),
        ("contractions tried after the other alternatives", _pretokenize(good_tail + "|" + P), "test_pretokenize"),
        ("merges the leftmost mergeable pair", '''
def bpe_merge(piece, ranks):
    parts = [bytes([b]) for b in piece]
    while True:
        i = next((i for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks), None)
        if i is None:
            return [ranks[p] for p in parts]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
''', "test_bpe_merge"),
        ("rightmost of equal ranks", '''
def bpe_merge(piece, ranks):
    parts = [bytes([b]) for b in piece]
    while True:
        c = [(ranks[parts[i] + parts[i + 1]], -i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not c:
            return [ranks[p] for p in parts]
        i = -min(c)[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
''', "test_bpe_merge"),
        ("highest rank first", '''
def bpe_merge(piece, ranks):
    parts = [bytes([b]) for b in piece]
    while True:
        c = [(-ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not c:
            return [ranks[p] for p in parts]
        i = min(c)[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
''', "test_bpe_merge"),
        ("one left-to-right pass of merges", '''
def bpe_merge(piece, ranks):
    parts, i = [bytes([b]) for b in piece], 0
    while i < len(parts) - 1:
        if parts[i] + parts[i + 1] in ranks:
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        else:
            i += 1
    return [ranks[p] for p in parts]
''', "test_bpe_merge"),
        ("<|endoftext|> not special", '''
def encode(text, ranks):
    return [i for piece in pretokenize(text) for i in bpe_merge(piece.encode("utf-8"), ranks)]
''', "test_encode"),
        ("no pre-tokenization (BPE over each whole chunk)", '''
def encode(text, ranks):
    ids = []
    for k, chunk in enumerate(text.split(EOT_TOKEN)):
        ids += ([EOT_ID] if k else []) + bpe_merge(chunk.encode("utf-8"), ranks)
    return ids
''', "test_encode"),
        ("<|endoftext|> dropped", '''
def encode(text, ranks):
    return [i for chunk in text.split(EOT_TOKEN) for piece in pretokenize(chunk)
            for i in bpe_merge(piece.encode("utf-8"), ranks)]
''', "test_encode"),
        ("each token decoded on its own", '''
def decode(ids, ranks):
    inverse = {r: t for t, r in ranks.items()}
    inverse[EOT_ID] = EOT_TOKEN.encode()
    return "".join(inverse[int(i)].decode("utf-8", errors="replace") for i in ids)
''', "test_decode"),
        ("broken bytes dropped (errors='ignore')", '''
def decode(ids, ranks):
    inverse = {r: t for t, r in ranks.items()}
    inverse[EOT_ID] = EOT_TOKEN.encode()
    return b"".join(inverse[int(i)] for i in ids).decode("utf-8", errors="ignore")
''', "test_decode"),
        ("<|endoftext|> decoded as ''", '''
def decode(ids, ranks):
    inverse = {r: t for t, r in ranks.items()}
    inverse[EOT_ID] = b""
    return b"".join(inverse[int(i)] for i in ids).decode("utf-8", errors="replace")
''', "test_decode"),
        ("exact (erf) GELU", "def gelu(x):\n    return F.gelu(x)\n", "test_gelu"),
        ("GELU without the cubic term",
         "def gelu(x):\n    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x))\n", "test_gelu"),
        ("sqrt(pi / 2) for sqrt(2 / pi)",
         "def gelu(x):\n    return 0.5 * x * (1 + torch.tanh(math.sqrt(math.pi / 2) * (x + 0.044715 * x ** 3)))\n",
         "test_gelu"),
        ("unbiased variance", '''
def layer_norm(x, weight, bias, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight + bias
''', "test_layer_norm"),
        ("eps outside the square root", '''
def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / (((x - mu) ** 2).mean(-1, keepdim=True).sqrt() + eps) * weight + bias
''', "test_layer_norm"),
        ("eps ignored (always 1e-5)", '''
def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * weight + bias
''', "test_layer_norm"),
        ("attention scores not scaled", _attention(scale="1.0"), "test_causal_self_attention"),
        ("scores scaled by sqrt(C) instead of sqrt(D)", _attention(scale="C ** -0.5"), "test_causal_self_attention"),
        ("no causal mask", _attention(causal=False), "test_causal_self_attention"),
        ("padding keys attended to", _attention(pad_keys=False), "test_causal_self_attention"),
        ("padding queries attend to nothing (NaN)", _attention(itself=False), "test_causal_self_attention"),
        ("heads split as [B, T, D, H]", _attention(heads="t.reshape(B, T, D, n_head).permute(0, 3, 1, 2)"),
         "test_causal_self_attention"),
        ("causal mask ignores the cached positions", _attention(offset="0"), "test_causal_self_attention"),
        ("returns only the new keys and values", _attention(new_kv_only=True), "test_causal_self_attention"),
        ("softmax over the queries", _attention(softmax_dim=-2), "test_causal_self_attention"),
        ("PyTorch's fused kernel (F.scaled_dot_product_attention)", _attention(sdpa=True), "test_causal_self_attention"),
        ("ReLU in the MLP", "def mlp(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):\n"
                            "    return torch.relu(x @ c_fc_w + c_fc_b) @ c_proj_w + c_proj_b\n", "test_mlp"),
        ("exact GELU in the MLP", "def mlp(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):\n"
                                  "    return F.gelu(x @ c_fc_w + c_fc_b) @ c_proj_w + c_proj_b\n", "test_mlp"),
        ("post-LN block", _block(post_ln=True), "test_transformer_block"),
        ("ln_1 before the MLP too", _block(ln1_twice=True), "test_transformer_block"),
        ("no residual around the MLP", _block(mlp_residual=False), "test_transformer_block"),
        ("eps not passed to the LayerNorms", _block(pass_eps=False), "test_transformer_block"),
        ("positions 0..T-1 whatever the padding", _gpt2(_GPT2_POSITIONS.replace(
            "(attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]", "torch.arange(P, P + T).expand(B, T)")
            + _GPT2_BLOCKS + _GPT2_RETURN), "test_gpt2_model"),
        ("no final LayerNorm", _gpt2(_GPT2_POSITIONS + _GPT2_BLOCKS + "return x, present\n"), "test_gpt2_model"),
        ("cached calls restart the positions at 0", _gpt2(_GPT2_POSITIONS.replace("torch.arange(P, P + T)", "torch.arange(T)")
                                                          .replace("[:, P:]", "[:, :T]") + _GPT2_BLOCKS + _GPT2_RETURN),
         "test_gpt2_model"),
        ("data offsets counted from the start of the file", NO_VALIDATION_READER.replace("body = data[8 + n:]", "body = data"),
         "test_read_safetensors"),
        ("__metadata__ read as a tensor", NO_VALIDATION_READER.replace('header.pop("__metadata__", None)', ""),
         "test_read_safetensors"),
        ("every tensor read as float32", NO_VALIDATION_READER.replace('SAFETENSORS_DTYPES[info["dtype"]]', "torch.float32"),
         "test_read_safetensors"),
        ("keeps the 'transformer.' prefix", NO_VALIDATION_LOADER.replace('name = name.removeprefix("transformer.")', ""),
         "test_load_gpt2_checkpoint"),
        ("n_head always 12 (config.json ignored)", NO_VALIDATION_LOADER.replace('extra.get("n_head", 12)', "12"),
         "test_load_gpt2_checkpoint"),
        ("dtype= ignored (float32 parameters)", NO_VALIDATION_LOADER.replace("GPT2(config).to(dtype)", "GPT2(config)"),
         "test_load_gpt2_checkpoint"),
        ("log(softmax) in two steps", "def logprobs_from_logits(logits, labels):\n"
         "    return torch.log(torch.softmax(logits, -1)).gather(-1, labels[..., None])[..., 0]\n",
         "test_logprobs_from_logits"),
        ("the label's logit, not normalised", "def logprobs_from_logits(logits, labels):\n"
         "    return logits.gather(-1, labels[..., None])[..., 0]\n", "test_logprobs_from_logits"),
        ("shifts inside (logits[:, :-1] vs labels[:, 1:])", "def logprobs_from_logits(logits, labels):\n"
         "    return torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None])[..., 0]\n",
         "test_logprobs_from_logits"),
        ("nucleus drops the token that crosses top_p", _sampler(nucleus="sp.cumsum(-1) > top_p"), "test_sample_next_token"),
        ("nucleus of the T = 1 probabilities", _sampler(before_temperature=True), "test_sample_next_token"),
        ("top_k ignored", _sampler(use_top_k=False), "test_sample_next_token"),
        ("logits multiplied by the temperature", _sampler(temperature="logits * temperature"), "test_sample_next_token"),
        ("no KV cache (the whole sequence every step)", _generator(cache=False), "test_generate"),
        ("finished rows keep sampling", _generator(filler=False), "test_generate"),
        ("response mask 0 on the EOS itself", _generator(eos_in_mask=False), "test_generate"),
        ("never stops early", _generator(early_stop=False), "test_generate"),
    ]
    return [(what, define(nb, source), cell) for what, source, cell in variants]


def _function(name: str) -> str:
    """The source of one function of NO_VALIDATION."""
    start = NO_VALIDATION.index(f"\ndef {name}(")
    end = NO_VALIDATION.find("\ndef ", start + 1)
    return NO_VALIDATION[start:end if end > 0 else None]


NO_VALIDATION_READER = _function("read_safetensors")
NO_VALIDATION_LOADER = _function("load_gpt2_checkpoint")


def test_each_wrong_variant_fails_the_cell_that_grades_it(nb):
    variants = wrong_variants(nb)
    assert len(variants) >= 50
    survivors = surviving_variants(NOTEBOOK, nb, variants)
    assert not survivors, f"wrong implementations that still pass: {survivors}"


# ----------------------------------------------------------------------------- attention: matmul + softmax


def test_the_fused_kernel_is_restored_after_the_attention_cell(nb):
    sdpa = F.scaled_dot_product_attention
    run_test_cells(NOTEBOOK, define(nb, _attention(sdpa=True)), module=nb, only=lambda g: g == "test_causal_self_attention")
    assert F.scaled_dot_product_attention is sdpa
    run_test_cells(NOTEBOOK, module=nb, only=lambda g: g == "test_causal_self_attention")
    assert F.scaled_dot_product_attention is sdpa


def test_reference_attention_needs_no_fused_kernel(nb, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("called F.scaled_dot_product_attention")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    w = [torch.randn(8, 24, generator=g, dtype=torch.float64), torch.randn(24, generator=g, dtype=torch.float64),
         torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = nb.causal_self_attention(x, *w, 2, attention_mask=mask)[0]
    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    assert torch.equal(nb.causal_self_attention(x, *w, 2, attention_mask=mask)[0], expected)


def test_reference_gpt2_fast_path_equals_the_graded_functions(nb):
    """GPT2's reference runs the blocks with F.scaled_dot_product_attention; composing the graded functions
    (matmul + softmax attention) gives the same hidden states, with and without padding and cache."""
    plain = define(nb, "class GPT2(GPT2):" + NO_VALIDATION.split("class GPT2(GPT2):")[1].split("\n\n\ndef ")[0])["GPT2"]
    cfg = nb.GPT2Config(vocab_size=60, n_positions=24, n_embd=16, n_layer=3, n_head=4)
    torch.manual_seed(0)
    ref = nb.GPT2(cfg).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    other = plain(cfg).double()
    other.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 60, (3, 10))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 10, [0] * 9 + [1]])
    with torch.no_grad():
        for kw in ({}, {"attention_mask": mask}):
            h_ref, kv_ref = ref.hidden_states_cached(ids, **kw)
            h_plain, kv_plain = other.hidden_states_cached(ids, **kw)
            real = mask.bool() if kw else torch.ones_like(mask, dtype=torch.bool)
            torch.testing.assert_close(h_ref[real], h_plain[real], rtol=1e-10, atol=1e-10)
            for (k1, v1), (k2, v2) in zip(kv_ref, kv_plain):
                torch.testing.assert_close(k1, k2, rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-10)
            step_ref, _ = ref.hidden_states_cached(ids[:, :1], torch.ones(3, 11, dtype=torch.long) if kw else None,
                                                   past_kv=kv_ref)
            step_plain, _ = other.hidden_states_cached(ids[:, :1], torch.ones(3, 11, dtype=torch.long) if kw else None,
                                                       past_kv=kv_plain)
            torch.testing.assert_close(step_ref, step_plain, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the weights


def test_points_follow_the_model_math():
    from helpers.notebook import cell_kind, nbgrader_meta, read_notebook

    points = {nbgrader_meta(c)["grade_id"]: nbgrader_meta(c)["points"]
              for c in read_notebook(NOTEBOOK)["cells"] if cell_kind(c) == "test"}
    tokenizer = sum(points[f"test_{f}"] for f in ("pretokenize", "bpe_merge", "encode", "decode", "decode_errors"))
    model_math = sum(points[f"test_{f}"] for f in ("gelu", "layer_norm", "causal_self_attention", "mlp",
                                                    "transformer_block", "gpt2_model", "logprobs_from_logits",
                                                    "sample_next_token", "generate"))
    assert points["test_pretokenize"] == 1
    assert points["test_causal_self_attention"] == max(points.values())
    assert model_math >= 3 * tokenizer, (model_math, tokenizer)
