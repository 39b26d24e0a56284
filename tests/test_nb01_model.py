"""Notebook 01, GPT-2 part: the reference model against Hugging Face ``transformers`` (test-only oracle).

Random-init ``GPT2LMHeadModel``s at two small shapes are saved in both checkpoint layouts
(``save_pretrained`` and the hub's), loaded with ``load_gpt2_checkpoint`` and compared: logits
(with and without left padding), final hidden states, greedy generation, the KV-cache path
against full recomputation, and the errors for bad inputs and bad files.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from helpers import load_notebook

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_tokenizer_gpt2" / "01_tokenizer_gpt2.ipynb"

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("transformers").setLevel(logging.ERROR)

# (vocab_size, n_positions, n_embd, n_layer, n_head)
SHAPES = {
    "h4_e64": (1000, 64, 64, 2, 4),
    "h2_e48": (997, 64, 48, 3, 2),
}
EOS = 7  # an id inside the small vocabularies, used as eos/pad for HF


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


def _hf_model(vocab, n_pos, n_embd, n_layer, n_head, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_positions=n_pos, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        # HF initialises LayerNorms to (1, 0) and biases to 0; random values test them too.
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        # Larger weights give sharper next-token distributions (greedy ties impossible in practice).
        model.transformer.wte.weight.mul_(10.0)
    return model


@pytest.fixture(scope="module", params=sorted(SHAPES))
def checkpoint(request, tmp_path_factory):
    """An HF model and its checkpoint in both key layouts."""
    vocab, n_pos, n_embd, n_layer, n_head = SHAPES[request.param]
    hf = _hf_model(vocab, n_pos, n_embd, n_layer, n_head, seed=len(request.param) + n_head)
    root = tmp_path_factory.mktemp(request.param)
    pretrained = root / "pretrained"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(pretrained, safe_serialization=True)
    assert (pretrained / "model.safetensors").is_file() and (pretrained / "config.json").is_file()
    # Hub layout: no "transformer." prefix, no lm_head, causal-mask buffers present, no config.json.
    hub = root / "hub"
    hub.mkdir()
    state = {k[len("transformer."):]: v.contiguous() for k, v in hf.state_dict().items() if k.startswith("transformer.")}
    for i in range(n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8)).view(1, 1, n_pos, n_pos)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    safetensors_torch.save_file(state, str(hub / "model.safetensors"), metadata={"format": "pt"})
    return {"hf": hf, "pretrained": pretrained, "hub": hub, "shape": SHAPES[request.param], "root": root}


def _config(nb, shape):
    vocab, n_pos, n_embd, n_layer, n_head = shape
    return nb.GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd, n_layer=n_layer, n_head=n_head)


def _left_padded(vocab, lengths, total, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), EOS, dtype=torch.long)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, total - n:] = torch.randint(0, vocab, (n,), generator=g)
        mask[b, total - n:] = 1
    return ids, mask


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.fixture(scope="module")
def ours(nb, checkpoint):
    return nb.load_gpt2_checkpoint(checkpoint["pretrained"])


def test_loads_both_layouts(nb, checkpoint):
    hf_state = {k[len("transformer."):]: v for k, v in checkpoint["hf"].state_dict().items() if k.startswith("transformer.")}
    cfg = _config(nb, checkpoint["shape"])
    m_pre = nb.load_gpt2_checkpoint(checkpoint["pretrained"])  # directory, n_head from config.json
    m_hub = nb.load_gpt2_checkpoint(checkpoint["hub"] / "model.safetensors", config=cfg)  # file, explicit config
    for m in (m_pre, m_hub):
        assert isinstance(m, nb.GPT2)
        for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            assert getattr(m.config, field) == getattr(cfg, field), field
        ours = m.state_dict()
        assert set(ours) == set(hf_state), sorted(set(ours) ^ set(hf_state))[:5]
        for k, v in hf_state.items():
            assert ours[k].dtype == torch.float32
            assert torch.equal(ours[k], v), k
    # lm_head is tied: HF's head equals our token embedding
    assert torch.equal(checkpoint["hf"].lm_head.weight, m_pre.wte.weight)


def test_hub_layout_without_config_needs_n_head(nb, checkpoint):
    n_embd = checkpoint["shape"][2]
    assert n_embd != 768
    with pytest.raises(ValueError, match="n_head"):
        nb.load_gpt2_checkpoint(checkpoint["hub"])


def test_hub_layout_with_config_json(nb, checkpoint, tmp_path):
    shutil.copy(checkpoint["hub"] / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"n_head": checkpoint["shape"][4]}))
    m = nb.load_gpt2_checkpoint(tmp_path)
    assert m.config.n_head == checkpoint["shape"][4]


def test_half_precision_checkpoint(nb, checkpoint, tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in safetensors_torch.load_file(str(checkpoint["hub"] / "model.safetensors")).items()
             if v.is_floating_point()}
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    m = nb.load_gpt2_checkpoint(tmp_path, config=_config(nb, checkpoint["shape"]))
    ref = checkpoint["hf"].transformer.h[0].attn.c_attn.weight
    assert m.h[0].attn.c_attn.weight.dtype == torch.float32
    assert torch.equal(m.h[0].attn.c_attn.weight, ref.to(torch.bfloat16).float())


def test_logits_match_hf_without_padding(ours, checkpoint):
    vocab, n_pos = checkpoint["shape"][:2]
    ids = torch.randint(0, vocab, (3, n_pos), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = checkpoint["hf"](ids).logits
        got = ours(ids)
        got_hidden = ours.hidden_states(ids)
        expected_hidden = checkpoint["hf"].transformer(ids).last_hidden_state
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 1e-4
    assert (got_hidden - expected_hidden).abs().max() <= 1e-4


def test_logits_match_hf_with_left_padding(ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids, mask = _left_padded(vocab, [12, 5, 1, 9], 12, seed=2)
    with torch.no_grad():
        expected = checkpoint["hf"](ids, attention_mask=mask, position_ids=_positions(mask)).logits
        got = ours(ids, attention_mask=mask)  # positions derived from the mask
        got_explicit = ours(ids, attention_mask=mask, position_ids=_positions(mask))
    assert torch.isfinite(got).all()
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-4
    assert (got_explicit[real] - expected[real]).abs().max() <= 1e-4
    # each padded row equals the same prompt alone, without padding
    with torch.no_grad():
        for b in range(ids.shape[0]):
            alone = checkpoint["hf"](ids[b:b + 1][:, real[b]]).logits[0]
            assert (got[b][real[b]] - alone).abs().max() <= 1e-4


def test_logprobs_match_hf(nb, ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf_logits = checkpoint["hf"](ids).logits
        expected = torch.log_softmax(hf_logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        got = nb.logprobs_from_logits(ours(ids)[:, :-1], ids[:, 1:])
    assert got.shape == (2, 15)
    assert (got - expected).abs().max() <= 1e-4


def _hf_greedy(hf, ids, mask, n, eos_token_id):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(
            ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=0 if eos_token_id is not None else n,
            do_sample=False, pad_token_id=EOS if eos_token_id is None else eos_token_id, eos_token_id=eos_token_id,
        )


def test_greedy_generate_matches_hf(nb, ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids, mask = _left_padded(vocab, [6, 3, 8], 8, seed=4)
    n = 12
    expected = _hf_greedy(checkpoint["hf"], ids, mask, n, eos_token_id=None)
    tokens, response_mask = nb.generate(ours, ids, mask, n, eos_id=None, temperature=0)
    assert tokens.dtype == torch.long and tokens.shape == (3, 8 + n)
    assert torch.equal(tokens, expected), (tokens[:, 8:], expected[:, 8:])
    assert torch.equal(response_mask, torch.ones(3, n, dtype=mask.dtype))


def test_greedy_generate_with_eos_matches_hf(nb, ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids, mask = _left_padded(vocab, [6, 3, 8], 8, seed=4)
    n = 12
    free = nb.generate(ours, ids, mask, n, eos_id=None, temperature=0)[0][:, 8:]
    eos = int(free[1, 3])  # row 1 stops after 4 tokens (or earlier if this id came before)
    expected = _hf_greedy(checkpoint["hf"], ids, mask, n, eos_token_id=eos)  # HF pads finished rows with eos too
    tokens, response_mask = nb.generate(ours, ids, mask, n, eos_id=eos, temperature=0)
    assert torch.equal(tokens, expected), (tokens[:, 8:], expected[:, 8:])
    gen = tokens[:, 8:]
    for b in range(3):
        hits = (gen[b] == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else gen.shape[1]
        assert response_mask[b].tolist() == [1] * stop + [0] * (gen.shape[1] - stop)
        assert (gen[b, stop:] == eos).all()
    assert response_mask[1, :4].sum() >= 1 and response_mask[1].sum() <= 4


def test_kv_cache_equals_full_recomputation(nb, ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids, mask = _left_padded(vocab, [5, 9, 2], 9, seed=5)
    # cached steps produce the same hidden states as a full pass over the whole sequence
    seq, seq_mask = ids, mask
    with torch.no_grad():
        h, cache = ours.hidden_states_cached(ids, mask)
        for _ in range(10):
            nxt = ours.lm_head(h[:, -1]).argmax(-1, keepdim=True)
            seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
            h, cache = ours.hidden_states_cached(nxt, seq_mask, past_kv=cache)
            full = ours.hidden_states(seq, seq_mask)[:, -1]
            assert (h[:, -1] - full).abs().max() <= 1e-5
    assert cache[0][0].shape[2] == seq.shape[1]
    tokens, _ = nb.generate(ours, ids, mask, 10, eos_id=None, temperature=0)
    assert torch.equal(tokens, seq[:, :19])


def test_sampling_is_reproducible_and_top_k_1_is_greedy(nb, ours, checkpoint):
    vocab = checkpoint["shape"][0]
    ids, mask = _left_padded(vocab, [4, 6], 6, seed=6)
    a = nb.generate(ours, ids, mask, 8, eos_id=None, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    b = nb.generate(ours, ids, mask, 8, eos_id=None, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0])
    greedy = nb.generate(ours, ids, mask, 8, eos_id=None, temperature=0)[0]
    assert torch.equal(nb.generate(ours, ids, mask, 8, eos_id=None, temperature=2.0, top_k=1)[0], greedy)


def test_input_errors(nb, ours, checkpoint):
    vocab, n_pos = checkpoint["shape"][:2]
    ids = torch.randint(0, vocab, (2, 5))
    with pytest.raises(TypeError):
        ours(ids.float())
    with pytest.raises(TypeError):
        ours(ids.int())
    with pytest.raises(ValueError):
        ours(ids[0])
    with pytest.raises(ValueError, match="too long"):
        ours(torch.zeros(1, n_pos + 1, dtype=torch.long))
    with pytest.raises(ValueError):
        ours(torch.tensor([[0, vocab]]))
    with pytest.raises(ValueError):
        ours(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        ours(ids, position_ids=torch.full((2, 5), n_pos))
    mask = torch.ones_like(ids)
    with pytest.raises(ValueError):
        nb.generate(ours, ids, mask, n_pos)  # 5 + n_pos > n_positions
    with pytest.raises(ValueError):
        nb.generate(ours, ids, mask[:, 1:], 3)
    with pytest.raises(ValueError):
        nb.generate(ours, ids, mask, 0)


def test_checkpoint_errors(nb, checkpoint, tmp_path):
    cfg = _config(nb, checkpoint["shape"])
    good = (checkpoint["hub"] / "model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError):
        nb.load_gpt2_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        nb.load_gpt2_checkpoint(tmp_path)  # directory without model.safetensors
    cases = {
        "truncated": good[: len(good) - 100],
        "header_too_long": (len(good) + 1).to_bytes(8, "little") + good[8:],
        "tiny": good[:5],
        "bad_json": (12).to_bytes(8, "little") + b"{not json!!}" + good[-64:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError):
            nb.load_gpt2_checkpoint(path, config=cfg)
    # unknown key layout: the message names an unexpected key
    state = safetensors_torch.load_file(str(checkpoint["hub"] / "model.safetensors"))
    renamed = {k.replace("mlp.c_fc", "mlp.fc_in"): v for k, v in state.items()}
    safetensors_torch.save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ValueError, match="fc_in"):
        nb.load_gpt2_checkpoint(tmp_path / "renamed.safetensors", config=cfg)
    other = {"encoder.embed.weight": torch.zeros(3, 4)}
    safetensors_torch.save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="encoder.embed.weight"):
        nb.load_gpt2_checkpoint(tmp_path / "other.safetensors", config=cfg)
    # config that disagrees with the shapes
    vocab, n_pos, n_embd, n_layer, n_head = checkpoint["shape"]
    wrong = nb.GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd, n_layer=n_layer + 1, n_head=n_head)
    with pytest.raises(ValueError, match="n_layer"):
        nb.load_gpt2_checkpoint(checkpoint["hub"], config=wrong)


def test_config_defaults_are_gpt2_small(nb):
    cfg = nb.GPT2Config()
    got = (cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.layer_norm_eps)
    assert got == (50257, 1024, 768, 12, 12, 1e-5)
    hf = transformers.GPT2Config()
    assert got == (hf.vocab_size, hf.n_positions, hf.n_embd, hf.n_layer, hf.n_head, hf.layer_norm_epsilon)
    with pytest.raises(ValueError):
        nb.GPT2Config(n_embd=100, n_head=12)
