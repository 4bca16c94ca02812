"""`tokenmill export CKPT --hf OUT`: a checkpoint's weights as a Hugging Face Llama (model.safetensors +
config.json), loadable by `transformers.LlamaForCausalLM.from_pretrained(OUT)`, and the run's tokenizer, loadable
by `transformers.AutoTokenizer.from_pretrained(OUT)` (`write_tokenizer`).

The model's RoPE already uses Hugging Face's "rotate half" layout, so export renames weights and splits the
fused QKV and gate/up matrices into their rows; nothing is permuted within a head. Runs in one process on the
CPU; the checkpoint may come from any number of ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file

from manifests import megatron
from manifests.check import check_file
from manifests.manifest import ManifestError
from manifests.manifest import load as load_manifest
from manifests.shards import ShardFormatError
from trainer import checkpoint
from trainer.config import ModelConfig
from trainer.model import Llama, build
from trainer.options import EXPORT_DTYPES, export_parser

_TOP_LEVEL = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
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
DTYPES = {name: getattr(torch, name) for name in EXPORT_DTYPES}


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


def export(ckpt: Path, out: Path, dtype: str = "float32", manifest: Path | None = None) -> Path:
    """The checkpoint's model and the tokenizer of its run (from `manifest`, default the run's) under `out`."""
    ckpt = checkpoint.resolve(ckpt, what="export")
    meta = checkpoint.read_meta(ckpt)
    tokenizer = run_tokenizer(meta, manifest)
    model = load_checkpoint_model(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file(hf_state_dict(model, DTYPES[dtype]), str(weights), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights, 0o666 & ~umask)  # safetensors writes through a private temporary file (0600)
    config = hf_config(model.cfg, bos_id=meta["tokenizer"]["bos_id"], eos_id=meta["tokenizer"]["eos_id"], dtype=dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(tokenizer, out, meta["tokenizer"], context=model.cfg.context)
    return out


def run_tokenizer(meta: dict, manifest_path: Path | None) -> tuple[Path, bool]:
    """(the sentencepiece model the run's data was tokenized with, whether its documents start with BOS), from
    the manifest: the checkpoint records its path and the tokenizer's sha256, which the file must match."""
    manifest_path = manifest_path or Path(meta["manifest"])
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as e:
        raise checkpoint.CheckpointError(
            f"the tokenizer comes from the run's manifest: {e}; pass --manifest PATH where the build is now"
        ) from None
    path = manifest.tokenizer_path()
    problem = check_file(path, size=None, sha256=meta["tokenizer"]["sha256"]) if path else "not copied into the build"
    if problem:
        raise checkpoint.CheckpointError(
            f"{path or manifest_path}: the run's tokenizer is {problem}; pass --manifest of the build the run trained "
            "on"
        )
    return path, manifest.tokenizer.add_bos


# How sentencepiece splits text into words before BPE (split_by_whitespace), on text whose spaces are "▁" and
# which starts with one: a word starts at the first "▁" of a run and runs to the next run. transformers' own
# conversion of a sentencepiece model applies BPE to the whole text instead.
_SENTENCEPIECE_WORDS = "▁+[^▁]*|[^▁]+"


def write_tokenizer(tokenizer: tuple[Path, bool], out: Path, ids: dict, *, context: int) -> None:
    """tokenizer.model, and tokenizer.json + tokenizer_config.json with which transformers encodes text to the
    ids sentencepiece gives (tested on the sample build's documents). Needs transformers (the `hf` extra); for a
    sentencepiece model of other settings than Llama's and Mistral's it stops with what differs."""
    model_file, add_bos = tokenizer
    transformers, tokenizers = _import_hf()
    proto = _sentencepiece_settings(model_file)
    shutil.copyfile(model_file, out / "tokenizer.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    special = {
        "bos_token": sp.id_to_piece(ids["bos_id"]),
        "eos_token": sp.id_to_piece(ids["eos_id"]),
        "unk_token": sp.id_to_piece(proto.trainer_spec.unk_id),
    }
    settings = {
        **special,
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "model_max_length": context,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(settings))
    converted = transformers.AutoTokenizer.from_pretrained(out)  # vocabulary and merges from tokenizer.model
    # sentencepiece merges the pair whose piece scores highest; the conversion ranks merges by piece id, which
    # puts whitespace pieces (id 259 "▁▁", scored -1e9) before words ("▁b"): "a  b" became "▁a", "▁▁", "b", not
    # "▁a", "▁", "▁b". Ranked by score, then id, BPE merges as sentencepiece does.
    spec = json.loads(converted._tokenizer.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    merged_id = [sp.piece_to_id(a + b) for a, b in merges]
    spec["model"]["merges"] = [
        list(m)
        for _, m in sorted(zip(merged_id, merges, strict=True), key=lambda pair: (-sp.get_score(pair[0]), pair[0]))
    ]
    converted._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    converted._tokenizer.normalizer = tokenizers.normalizers.Sequence(
        [tokenizers.normalizers.Prepend("▁"), tokenizers.normalizers.Replace(" ", "▁")]
    )
    converted._tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(_SENTENCEPIECE_WORDS), behavior="isolated"
    )
    converted.save_pretrained(out)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    # Loaded as LlamaTokenizer, transformers would rebuild the conversion's pre-tokenizer over tokenizer.json's.
    (out / "tokenizer_config.json").write_text(
        json.dumps({**saved, **settings, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n"
    )


def _import_hf():
    try:
        import tokenizers
        import transformers
    except ImportError:
        raise checkpoint.CheckpointError(
            "--hf writes the tokenizer for transformers, which is not installed: pip install 'tokenmill[hf]'"
        ) from None
    return transformers, tokenizers


def _sentencepiece_settings(model_file: Path):
    """The model's settings, if they are those `_SENTENCEPIECE_WORDS` reproduces."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    expected = {
        "model type": (proto.trainer_spec.model_type, sentencepiece_model_pb2.TrainerSpec.BPE),
        "normalization": (proto.normalizer_spec.name, "identity"),
        "add_dummy_prefix": (proto.normalizer_spec.add_dummy_prefix, True),
        "remove_extra_whitespaces": (proto.normalizer_spec.remove_extra_whitespaces, False),
        "split_by_whitespace": (proto.trainer_spec.split_by_whitespace, True),
        "treat_whitespace_as_suffix": (proto.trainer_spec.treat_whitespace_as_suffix, False),
    }
    differ = [f"{name} {got!r} (not {want!r})" for name, (got, want) in expected.items() if got != want]
    if differ:
        raise checkpoint.CheckpointError(
            f"{model_file}: a sentencepiece model with {', '.join(differ)}; export writes tokenizers for Llama-style "
            "models only"
        )
    return proto


def main(argv: list[str]) -> int:
    parser = export_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`tokenmill export` once its arguments are parsed (trainer.options.export_main parses them before torch loads)."""
    if args.megatron:
        if args.checkpoint is not None:
            parser.error(
                f"--megatron exports a manifest, not the checkpoint {args.checkpoint}: tokenmill export --megatron "
                "MANIFEST OUT"
            )
        return _export_megatron(*args.megatron)
    if args.checkpoint is None:
        parser.error("--hf: name the checkpoint to export: tokenmill export CHECKPOINT --hf OUT")
    try:
        out = export(args.checkpoint, args.hf, args.dtype, args.manifest)
    except checkpoint.CheckpointError as e:
        print(f"tokenmill export: {e}", file=sys.stderr)
        return 2
    print(f"exported {checkpoint.resolve(args.checkpoint, what='export')} to {out} (weights, config and tokenizer)")
    return 0


def _export_megatron(manifest_path: Path, out: Path) -> int:
    created = not out.exists()
    try:
        manifest = load_manifest(manifest_path)
        written = megatron.export(manifest, out)
    except (ManifestError, ShardFormatError, OSError) as e:
        if created and out.is_dir():  # a refused export leaves nothing behind (a damaged shard is found midway)
            shutil.rmtree(out)
        print(f"tokenmill export: {e}", file=sys.stderr)
        return 2
    for split, path in written.items():
        folders = sorted({str((out / shard.entry.bin).parent) for shard in manifest.shards(split)})
        print(
            f"{split}: {len(manifest.shards(split))} Megatron datasets under {', '.join(folders)}; their blend: {path}"
        )
    print(
        f"Megatron-LM: --train-data-path $(cat {written.get('train', out / 'train.data-path')}) (README.md: Training "
        "with another framework)"
    )
    return 0
