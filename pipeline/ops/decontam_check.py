"""`tokenmill decontam-check MANIFEST EVALSET...`: does a finished build hold items of an eval set it was not
decontaminated against? Without rebuilding: every shard's documents are decoded with the build's own
tokenizer.model and matched with the same rule and index as the build's decontaminate stage
(`stages.decontaminate`). Exit 0: no document matches; 1: some do (listed, with the input file and line or row
each came from); 2: bad input (a missing eval file, a field no record has, an empty set, an n below 1).

An EVALSET is `PATH` (a file or glob; the set is named after the file) or `NAME=PATH[,PATH...]`. The word rule
normalizes the decoded text as the build normalizes its input, so a document matches as it would have at build
time, up to what the tokenizer does not give back verbatim (sentencepiece's byte fallback gives it all back).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from manifests.config import ConfigError
from manifests.keys import split_key
from manifests.manifest import ManifestError, load
from manifests.shards import open_tokens, read_index
from pipeline.tasks.decontaminate import eval_sets
from stages.decontaminate import DecontaminateConfig, EvalSetConfig, EvalSetError, build_index, match, unit_sequences
from stages.tokenize import Tokenizer

BATCH = 512  # documents decoded and matched at a time
SHOWN = 20  # matched documents listed per set


def _set_config(arg: str, fields: list[str]) -> EvalSetConfig:
    name, _, paths = arg.partition("=") if "=" in arg.split("/")[0] else ("", "", arg)
    if not name:
        stem = Path(arg.split(",")[0]).name
        name = stem.split(".")[0] or "evalset"
    return EvalSetConfig(name=name, files=paths.split(","), fields=fields)


def check(manifest_path: Path, config: DecontaminateConfig) -> dict:
    """Per set: documents matched, per item the documents, and the first SHOWN matched documents."""
    manifest = load(manifest_path)
    tokenizer_path = manifest.tokenizer_path()
    if tokenizer_path is None or not tokenizer_path.exists():
        raise ManifestError(
            f"{manifest_path}: the build's tokenizer.model is missing beside it; copy it back to decode the shards"
        )
    tokenizer = Tokenizer.from_bytes(tokenizer_path.read_bytes(), False, False)
    sets = eval_sets(config)
    encode = lambda texts: [np.asarray(t, np.int64) for t in tokenizer.processor.encode(texts)]  # noqa: E731
    index = build_index(config.rules(), sets, encode)
    inputs = manifest.inputs
    found = {s.name: {"documents": 0, "items": {}, "shown": []} for s in sets}
    documents = 0
    for split in manifest.splits:
        for ref in manifest.shards(split):
            shard = read_index(ref.idx_path)
            tokens = open_tokens(ref.bin_path, shard)
            for first in range(0, shard.documents, BATCH):
                docs = range(first, min(shard.documents, first + BATCH))
                ids = [np.asarray(tokens[slice(*shard.doc_span(i))]) for i in docs]
                documents += len(ids)
                matches = []
                if "words" in index.tables:
                    texts = [tokenizer.processor.decode(t.tolist()) for t in ids]
                    matches += match(index, "words", *unit_sequences(texts, None))
                if "tokens" in index.tables:
                    matches += match(index, "tokens", *unit_sequences(None, ids))
                _count(matches, docs, shard, sets, inputs, split, found)
    return {"manifest": str(manifest_path), "documents": documents, "sets": found}


def _count(matches, docs: range, shard, sets, inputs: list, split: str, found: dict) -> None:
    seen = set()
    for m in matches:
        eval_set = sets[m.set_no]
        out = found[eval_set.name]
        item = eval_set.items[m.item - sum(len(s.items) for s in sets[: m.set_no])].where
        out["items"][item] = out["items"].get(item, 0) + 1
        if (m.doc, m.set_no) in seen:
            continue
        seen.add((m.doc, m.set_no))
        out["documents"] += 1
        if len(out["shown"]) < SHOWN:
            file_index, ordinal = split_key(int(shard.origins[docs[m.doc]]))
            origin = f"{inputs[file_index].source}/{inputs[file_index].path}" if file_index < len(inputs) else "?"
            out["shown"].append({"split": split, "doc": f"{origin}#{ordinal}", "item": item})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill decontam-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="a build's manifest.json (or its folder)")
    parser.add_argument(
        "evalsets", nargs="+", metavar="EVALSET", help="PATH or NAME=PATH[,PATH...] (.jsonl, .parquet, .txt; globs)"
    )
    parser.add_argument(
        "--fields", default="text", help="comma-separated record fields making an item's text (default: text)"
    )
    parser.add_argument("--ngram", type=int, default=13, help="n-gram size (default 13)")
    parser.add_argument(
        "--rule", default="words", help="words (normalized word n-grams, default) or tokens (token ids)"
    )
    parser.add_argument(
        "--min-share",
        type=float,
        default=0.0,
        help="share of an item's n-grams a document must hold (default 0: any one)",
    )
    parser.add_argument("--min-words", type=int, default=8, help="shortest item matched as a whole string (default 8)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    path = args.manifest / "manifest.json" if args.manifest.is_dir() else args.manifest
    try:
        fields = [f for f in args.fields.split(",") if f]
        config = DecontaminateConfig(
            sets=[_set_config(a, fields) for a in args.evalsets],
            ngram=args.ngram,
            rule=args.rule,
            min_share=args.min_share,
            min_words=args.min_words,
        )
        result = check(path, config)
    except ConfigError as e:
        print(f"tokenmill decontam-check: {e.field}: {e.message}", file=sys.stderr)
        return 2
    except (EvalSetError, ManifestError, FileNotFoundError) as e:
        print(f"tokenmill decontam-check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['documents']:,} documents in the shards of {path}")
        for name, s in result["sets"].items():
            print(f"  {name}: {s['documents']:,} documents hold {len(s['items']):,} of its items")
            for shown in s["shown"]:
                print(f"    {shown['split']:<10} {shown['doc']}  <- {shown['item']}")
    return 1 if any(s["documents"] for s in result["sets"].values()) else 0
