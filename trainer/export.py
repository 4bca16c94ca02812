"""`tokenmill export CKPT --hf OUT`: a checkpoint's weights as a Hugging Face Llama (model.safetensors +
config.json), loadable by `transformers.LlamaForCausalLM.from_pretrained(OUT)`.

The model's RoPE already uses Hugging Face's "rotate half" layout, so export renames weights and splits the
fused QKV and gate/up matrices into their rows; nothing is permuted within a head. Runs in one process on the
CPU; the checkpoint may come from any number of ranks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer import checkpoint
from trainer.config import ModelConfig
from trainer.model import Llama, build

_TOP_LEVEL = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_IN_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
# Fused matrices and the Hugging Face matrices they hold (see trainer.model for their row layouts).
_FUSED_IN_BLOCK = {
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_names(name: str) -> tuple[str, ...]:
    """tokenmill parameter name -> its Hugging Face Llama names, one per row block of a fused matrix
    ("layers.3.attn.o.weight" -> ("model.layers.3.self_attn.o_proj.weight",), "layers.3.attn.qkv.weight" ->
    the layer's q_proj, k_proj and v_proj)."""
    if name in _TOP_LEVEL:
        return (_TOP_LEVEL[name],)
    _, layer, rest = name.split(".", 2)
    parts = _FUSED_IN_BLOCK[rest] if rest in _FUSED_IN_BLOCK else (_IN_BLOCK[rest],)
    return tuple(f"model.layers.{layer}.{part}" for part in parts)


def split_fused(name: str, tensor: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    """A fused matrix's parts, in `hf_names` order: QKV by row blocks, gate/up by alternate rows."""
    if name.endswith("attn.qkv.weight"):
        return tensor.split([cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim])
    if name.endswith("mlp.gate_up.weight"):
        return tensor[0::2], tensor[1::2]
    return (tensor,)


def hf_state_dict(model: Llama, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in model.state_dict().items():
        parts = zip(hf_names(name), split_fused(name, tensor, model.cfg), strict=True)
        out.update((hf, part.detach().to(dtype).contiguous()) for hf, part in parts)
    return out


def hf_config(cfg: ModelConfig, *, bos_id: int, eos_id: int, dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
    }


def load_checkpoint_model(path: Path) -> Llama:
    """The checkpoint's model, unsharded, fp32, on the CPU."""
    meta = checkpoint.read_meta(path)
    model = build(ModelConfig(**meta["model"]), seed=0)  # every weight is overwritten by the checkpoint's
    checkpoint.load_model_weights(path, model)
    return model


def export(ckpt: Path, out: Path, dtype: str = "float32") -> Path:
    ckpt = checkpoint.resolve(ckpt)
    meta = checkpoint.read_meta(ckpt)
    model = load_checkpoint_model(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model, DTYPES[dtype]), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.cfg, bos_id=meta["tokenizer"]["bos_id"], eos_id=meta["tokenizer"]["eos_id"], dtype=dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a step-* checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--hf", type=Path, required=True, help="output folder for the Hugging Face model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weight dtype in the export (default float32: the trained values exactly)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.hf, args.dtype)
    except checkpoint.CheckpointError as e:
        print(f"tokenmill export: {e}", file=sys.stderr)
        return 2
    print(f"exported {checkpoint.resolve(args.checkpoint)} to {out}")
    return 0
