"""The trainer's command-line options, without torch: `tokenmill train --help` and `tokenmill export --help` answer
at once, and every argument is checked before the seconds torch takes to import."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from trainer.config import TrainConfig

EXPORT_DTYPES = ("bfloat16", "float16", "float32")  # torch dtypes by name (trainer.export.DTYPES)


def build_parser() -> argparse.ArgumentParser:
    """One option per TrainConfig field. Options not given are left out of the parsed namespace (not filled with
    defaults), so that a resume can tell them from those given again (`trainer.train.parse_config`)."""
    description = (
        "Train a Llama from a manifest's shards: FSDP2 over several devices, a bf16 replica of the fp32 weights on "
        "one. "
        "Run under torchrun, one process per GPU, or through `tokenmill train --nproc N`."
    )
    parser = argparse.ArgumentParser(
        prog="trainer.train", description=description, allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = field.type.removesuffix(" | None")
        sentence = field.metadata["help"]
        if kind == "bool":
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                help=f"{sentence} (default: {'on' if field.default else 'off'})",
            )
        else:
            shown = f" (default: {field.default})" if field.default is not None else ""
            parser.add_argument(flag, type={"int": int, "float": float}.get(kind, str), help=sentence + shown)
    return parser


def add_nproc(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--nproc",
        type=int,
        help="processes on this machine (default: one per GPU, or 1 without a GPU; with --resume: the checkpoint's)",
    )
    return parser


def train_parser() -> argparse.ArgumentParser:
    parser = add_nproc(build_parser())
    parser.prog = "tokenmill train"
    return parser


EXPORT_DESCRIPTION = (
    "`tokenmill export CKPT --hf OUT`: a checkpoint's weights as a Hugging Face Llama (model.safetensors + "
    "config.json) and the run's tokenizer; `tokenmill export --megatron MANIFEST OUT`: a build's shards for "
    "Megatron-LM."
)


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmill export",
        description=EXPORT_DESCRIPTION,
        epilog="tokenmill export --megatron MANIFEST OUT: the manifest's shards as Megatron-LM indexed datasets "
        "(manifests/megatron.py).",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        nargs="?",
        help="a step-* checkpoint folder, or a run folder (its newest checkpoint); with --hf",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--hf", type=Path, help="output folder for the Hugging Face model")
    target.add_argument(
        "--megatron",
        type=Path,
        nargs=2,
        metavar=("MANIFEST", "OUT"),
        help="write every shard of MANIFEST as a Megatron-LM indexed dataset under OUT (its own .idx, a link to the "
        ".bin) and OUT/SPLIT.data-path, a --data-path blend per split; no checkpoint",
    )
    parser.add_argument(
        "--dtype",
        choices=EXPORT_DTYPES,
        default="float32",
        help="weight dtype in the export (default float32: the trained values exactly)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="with --hf: the build whose tokenizer the run used, if it moved (default: the path the run recorded)",
    )
    return parser


def export_main(argv: list[str]) -> int:
    """`tokenmill export`: the arguments first (and --help), then torch."""
    parser = export_parser()
    args = parser.parse_args(argv)
    from trainer.export import run

    return run(args, parser)
