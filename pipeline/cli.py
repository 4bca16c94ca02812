"""`tokenmill` command line: one subcommand per user task; each module owns its own arguments."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# subcommand -> (module, function taking argv, one-line help)
COMMANDS = {
    "sample": (
        "pipeline.sample_corpus",
        "main",
        "write the offline sample corpus in SlimPajama / StarCoderData layouts",
    ),
    "recipe": (
        "pipeline.build.recipe_commands",
        "main",
        "show a recipe as a build reads it, or copy it into an editable, self-contained file",
    ),
    "build": ("pipeline.build.driver", "main", "build mixed token shards + manifest from a recipe (Ray)"),
    "verify": ("pipeline.ops.verify", "main", "check sizes, token counts and checksums of every shard of a manifest"),
    "inspect": ("pipeline.ops.verify", "inspect_main", "decode one document of a manifest back to text"),
    "stats": ("pipeline.report.stats", "main", "dataset statistics report (report.html, stats.json, summary.md)"),
    "submit": ("pipeline.ops.jobs", "submit_main", "submit a build to a Ray cluster through the Jobs API"),
    "jobs": ("pipeline.ops.jobs", "jobs_main", "list / status / logs / stop Ray jobs"),
    "decontam-check": ("pipeline.ops.decontam_check", "main", "check a built corpus against eval sets, no rebuild"),
    "stage-in": ("pipeline.ops.stage_in", "main", "copy and verify a manifest's shards to local disk for training"),
    "work": (
        "pipeline.work.commands",
        "main",
        "list or prune a build work store (task outputs re-used across builds and mixes)",
    ),
    "sweep": ("pipeline.sweep.run", "main", "train proxy models on mixtures of a processed corpus and propose the mix"),
    "train": ("trainer.launch", "main", "train from a manifest (FSDP2, one process per GPU)"),
    "export": (
        "trainer.options",
        "export_main",
        "export a checkpoint to Hugging Face safetensors, or a manifest's shards for Megatron-LM",
    ),
    "bench": ("pipeline.cli", "bench_main", "corpus build throughput against datatrove (from a checkout)"),
    "completion": (
        "pipeline.completion",
        "main",
        "print a shell completion script: source <(tokenmill completion bash)",
    ),
}


REPO = Path(__file__).resolve().parent.parent


def bench_main(argv: list[str]) -> int:
    """`tokenmill bench`: bench/build_throughput.py, which lives in the repository, not in the wheel."""
    if not (REPO / "bench" / "build_throughput.py").is_file():
        print(
            f"tokenmill bench: {REPO / 'bench'} is missing; the benchmark runs from a checkout of the repository "
            "(pip install -e .), not from an installed wheel",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(REPO))
    return importlib.import_module("bench.build_throughput").main(argv)


def add_folder_argument(parser: argparse.ArgumentParser, name: str, metavar: str, help: str) -> None:
    """A command's folder argument `name`, taken as a positional argument or as `--out`, the name every other
    command gives its output; `folder_argument` reads it back."""
    parser.add_argument(name, type=Path, nargs="?", metavar=metavar, help=help)
    parser.add_argument(
        "--out",
        type=Path,
        dest=f"{name}_option",
        metavar=metavar,
        help="the same folder, named like every other command's output",
    )


def folder_argument(
    parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, what: str, example: str
) -> Path:
    """The folder `add_folder_argument` took, given exactly once (else the usage error shows `example`)."""
    positional, option = getattr(args, name), getattr(args, f"{name}_option")
    if (positional is None) == (option is None):
        parser.error(f"give the {what} once: {example}")
    return positional or option


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tokenmill [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`tokenmill COMMAND --help` shows a command's arguments."]
    return "\n".join(lines)


# commands that read or write object stores themselves; the others read a local build or checkpoint
REMOTE_COMMANDS = ("build", "stage-in", "work")
LOCAL_COMMANDS = ("verify", "inspect", "stats", "train", "export")
_NOT_STORAGE = ("--address",)  # a Ray address (http://head:8265) is no storage URL


def url_refusal(name: str, rest: list[str]) -> str | None:
    """One line for a URL the command cannot open: its scheme's package is not installed (naming the extra), or
    the command reads local files only (naming `stage-in`). Checked before the command imports anything heavy."""
    if name not in REMOTE_COMMANDS + LOCAL_COMMANDS:
        return None
    from stages.extras import missing_for_url, scheme

    for before, arg in zip([""] + rest, rest):
        flag, _, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if before in _NOT_STORAGE or flag in _NOT_STORAGE or scheme(value) in (None, "file"):
            continue
        missing = missing_for_url(value)
        if missing:
            return f"{value}: {missing}"
        if name in LOCAL_COMMANDS:
            return (
                f"{value}: `tokenmill {name}` reads local files; copy the build to local disk first: "
                f"tokenmill stage-in MANIFEST_URL --out DIR"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a command is missing: the usage, as an error
        print(f"tokenmill: give a command\n\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        from pipeline import __version__

        print(f"tokenmill {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tokenmill: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    refused = url_refusal(name, rest)
    if refused:
        print(f"tokenmill {name}: {refused}", file=sys.stderr)
        return 2
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except BrokenPipeError:  # `tokenmill inspect ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except KeyboardInterrupt:
        print(
            f"\ntokenmill {name}: interrupted; what finished is kept: run the same command again to go on",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
