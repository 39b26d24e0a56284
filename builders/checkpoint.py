"""Writing a GPT-2 checkpoint: ``model.safetensors`` + a Hugging Face-style ``config.json``.

Used by every model artifact's build (default, SFT and reward model). Not released: the file layout
is what notebook 01's ``read_safetensors`` has students parse.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from helpers.vocab import EOT_ID

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A minimal safetensors writer (header JSON + raw little-endian bytes), no extra package."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def save_model(model: torch.nn.Module, folder: str | Path) -> None:
    """Write ``model.safetensors`` and a Hugging Face-style ``config.json`` into ``folder``
    (readable by ``load_gpt2_checkpoint(folder)`` and by ``transformers``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    write_safetensors(folder / MODEL_FILE, dict(model.state_dict()))
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
          "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions, "n_embd": cfg.n_embd,
          "n_layer": cfg.n_layer, "n_head": cfg.n_head, "layer_norm_epsilon": cfg.layer_norm_eps,
          "bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "tie_word_embeddings": True}
    (folder / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
