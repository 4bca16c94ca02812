"""`tokenmill stats`: the statistics of a built corpus, from its manifest, its shards' indexes and (when the
build left one) `build_stats.json`; `pipeline.report.page` renders them as report.html and summary.md.

Large corpora: the shards are read one index at a time (18 bytes a document) and folded into per-source
counts and log2 length histograms, so memory stays flat however many documents there are; everything about
the documents before the mix (characters, drops, duplicate clusters) comes from the build's merged per-task
partial results in `build_stats.json`, never from the text itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from manifests import read_index
from manifests.manifest import Manifest, ManifestError, ShardRef, load
from manifests.outputs import BUILD_STATS, DROPPED_SAMPLES
from pipeline.build.registry import STAGE_NAMES
from pipeline.report.page import ReportError, render_html, render_summary, screenshot
from pipeline.tasks.lengths import BUCKETS, LENGTH_EDGES, length_buckets
from stages.document import FUNNEL_STEPS, drop_step

FORMAT = "tokenmill.stats"
FORMAT_VERSION = 1
BUILD_STATS_FORMAT = "tokenmill.build_stats"
SAMPLES_SHOWN = 3  # example documents per source and reason in the report (the file may hold more)
SAMPLE_CHARS_SHOWN = 240
# A validation split smaller than this gives a loss too noisy to compare runs by.
MIN_VALIDATION_DOCUMENTS = 100
# The training budget of the token-budget view: TinyLlama's 3T tokens.
DEFAULT_BUDGET_TOKENS = 3_000_000_000_000


class StatsError(ValueError):
    """Input the report cannot be made from; the message names the file and the fix."""


def dropped_by_step(dropped: dict[str, int]) -> dict[str, int]:
    return {step: sum(n for reason, n in dropped.items() if drop_step(reason) == step) for step in FUNNEL_STEPS}


def drop_reasons(sources: dict, subsets: dict) -> dict[str, str]:
    """Every drop reason seen, with its funnel step, in pipeline order."""
    seen = {reason for row in [*sources.values(), *subsets.values()] for reason in row["dropped"]}
    ordered = sorted(seen, key=lambda r: (FUNNEL_STEPS.index(drop_step(r)), r))
    return {reason: drop_step(reason) for reason in ordered}


def read_build_stats(path: Path) -> dict | None:
    """The build's per-subset / per-stage records, or None when the build left none."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StatsError(
            f"{path}: not valid JSON (line {e.lineno}): {e.msg}; delete it to report from the shards alone"
        ) from None
    if data.get("format") != BUILD_STATS_FORMAT or data.get("version") != 1:
        raise StatsError(
            f"{path}: format {data.get('format')!r} version {data.get('version')!r}, this tokenmill reads "
            f"{BUILD_STATS_FORMAT!r} version 1; rebuild, or delete it to report from the shards alone"
        )
    for kind in ("chars", "tokens"):
        if data["histogram_edges"][kind] != LENGTH_EDGES:
            raise StatsError(f"{path}: histogram_edges.{kind} are not the log2 edges [0, 1, 2, 4, ..., 2**31]; rebuild")
    return data


def _cut(text: str) -> str:
    return text[:SAMPLE_CHARS_SHOWN] + ("…" if len(text) > SAMPLE_CHARS_SHOWN else "")


def read_dropped_samples(path: Path) -> list[dict]:
    """Example documents the filters and the dedupe steps removed (`dropped_samples.jsonl`, written by the
    build), at most SAMPLES_SHOWN per source and reason (the first in the file, which lists a dedupe step's
    subsets in turn), their texts cut to SAMPLE_CHARS_SHOWN characters; [] without the file."""
    if not path.exists():
        return []
    shown, taken = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            sample = json.loads(line)
            key = (sample["source"], sample["reason"])
            text = sample["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise StatsError(
                f"{path}:{number}: not a dropped-sample record; delete the file to report without examples"
            ) from None
        if taken.setdefault(key, 0) < SAMPLES_SHOWN:
            taken[key] += 1
            cut = {"text": _cut(text)} | ({"kept_text": _cut(sample["kept_text"])} if "kept_text" in sample else {})
            shown.append({**sample, **cut, "step": drop_step(sample["reason"])})
    return sorted(shown, key=lambda s: (FUNNEL_STEPS.index(s["step"]), s["reason"], s["source"]))


def read_decontamination(root: Path, entry: dict | None) -> dict | None:
    """What the build's eval sets matched (decontamination.json beside the manifest; `entry`: the manifest's
    `decontamination`), or None without eval sets."""
    if entry is None:
        return None
    path = root / entry["path"]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StatsError(f"{path}: cannot be read ({e}); rebuild, or copy it back beside the manifest") from None
    return {"path": entry["path"], "sets": data["sets"]}


def _shard_error_row(ref: ShardRef, problem: str) -> dict:
    return {
        "split": ref.split,
        "documents": 0,
        "tokens": 0,
        "bin_bytes": 0,
        "idx_bytes": 0,
        "documents_by_source": {},
        "tokens_by_source": {},
        "idx_status": problem,
        "bin_status": "not checked",
    }


def _status(problems: list, part: str, hashed: bool) -> str:
    mine = [p.problem for p in problems if p.part == part]
    return "; ".join(mine) if mine else ("ok" if hashed else "size ok")


def scan_shard(
    ref: ShardRef, names: dict[int, str], verify_bins: bool, id_sources: np.ndarray | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """One shard's recount from its index: documents and tokens per source, the log2 histogram of document
    lengths per source, and its check against the manifest (`manifests.check_shard`). `id_sources`: for a
    build with domains, the source id of each domain id the index holds."""
    problems = ref.check(checksums=verify_bins)
    if any(p.part == "idx" for p in problems):
        return _shard_error_row(ref, _status(problems, "idx", True)), {}
    index = read_index(ref.idx_path)
    ids = index.source_ids.astype(np.int64)
    if id_sources is not None and len(ids):
        known = ids < len(id_sources)  # an id the manifest does not know stays visible (as source#N)
        ids = np.where(known, id_sources[np.minimum(ids, len(id_sources) - 1)], ids + len(names))
    lengths = index.doc_lengths()
    width = int(ids.max()) + 1 if len(ids) else 0
    docs = np.bincount(ids, minlength=width)
    # float64 sums are exact below 2**53 tokens, far above any shard
    tokens = np.bincount(ids, weights=lengths, minlength=width).round().astype(np.int64)
    hist = np.bincount(ids * BUCKETS + length_buckets(lengths), minlength=width * BUCKETS).reshape(width, BUCKETS)
    # every source of the manifest (zeros included, as the build writes them), plus any unknown id present
    shown = sorted(set(names) | {i for i in range(width) if docs[i]})
    docs, tokens = (np.pad(a, (0, max(shown, default=-1) + 1 - width)) for a in (docs, tokens))
    row = {
        "split": ref.split,
        "documents": index.documents,
        "tokens": index.tokens,
        "bin_bytes": ref.entry.bin_bytes,
        "idx_bytes": ref.entry.idx_bytes,
        "documents_by_source": {names.get(i, f"source#{i}"): int(docs[i]) for i in shown},
        "tokens_by_source": {names.get(i, f"source#{i}"): int(tokens[i]) for i in shown},
        "idx_status": "ok",
        "bin_status": _status(problems, "bin", verify_bins),
    }
    return row, {names.get(i, f"source#{i}"): hist[i] for i in range(width) if docs[i]}


def _add_counts(total: dict[str, int], part: dict[str, int]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def scan_shards(manifest: Manifest, verify_bins: bool) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Every shard's recount (by its .bin path), the per-split totals of those recounts, and the token-length
    histogram per source."""
    names = {s.id: s.name for s in manifest.sources}
    id_sources = np.asarray(manifest.id_sources(), np.int64) if manifest.domains else None
    rows, splits, hists = {}, {}, {}
    for split in manifest.splits:
        total = {"documents": 0, "tokens": 0, "documents_by_source": {}, "tokens_by_source": {}, "shards": 0}
        for ref in manifest.shards(split):
            row, shard_hists = scan_shard(ref, names, verify_bins, id_sources)
            rows[ref.entry.bin] = row
            total["shards"] += 1
            total["documents"] += row["documents"]
            total["tokens"] += row["tokens"]
            _add_counts(total["documents_by_source"], row["documents_by_source"])
            _add_counts(total["tokens_by_source"], row["tokens_by_source"])
            for name, hist in shard_hists.items():
                hists[name] = hists.get(name, 0) + hist
        splits[split] = total
    return rows, splits, hists


def subset_rows(manifest: Manifest, build: dict | None) -> dict[str, dict]:
    """The funnel per subset (redpajama_set_name / language folder): from build_stats.json when the build left
    it, else from whatever counts the manifest's `sources[].subsets` carry."""
    if build is not None:
        records = build["subsets"].values()
    else:
        records = [
            {"source": s.name, "subset": name, **asdict(counts)}
            for s in manifest.sources
            for name, counts in s.subsets.items()
        ]
    fields = ("documents_read", "bytes_read", "chars_read", "documents_kept", "chars_kept", "tokens_kept")
    rows = {}
    for r in sorted(records, key=lambda r: (r["source"], r["subset"])):
        dropped = dict(r.get("dropped", {}))
        row = {
            "source": r["source"],
            "subset": r["subset"],
            "dropped": dropped,
            "dropped_by_step": dropped_by_step(dropped),
            **{f: int(r.get(f, 0)) for f in fields},
        }
        row["records_read"] = row["documents_read"] + row["dropped_by_step"]["bad input"]
        row["fertility"] = row["tokens_kept"] / row["chars_kept"] if row["chars_kept"] else None
        row["kept_share"] = row["documents_kept"] / row["documents_read"] if row["documents_read"] else None
        rows[f"{r['source']}/{r['subset']}"] = row
    return rows


def funnel(documents_read: int, dropped: dict[str, int]) -> dict[str, dict]:
    """Records left after each step of the pipeline, and what each step removed. Bad input never became a
    document, so `documents_read` does not count it: the funnel starts from both."""
    by_step = dropped_by_step(dropped)
    left = documents_read + by_step["bad input"]
    steps = {"records read": {"removed": 0, "left": left}}
    for step, removed in by_step.items():
        left -= removed
        steps[step] = {"removed": removed, "left": left}
    return steps


def source_rows(manifest: Manifest, splits: dict, subsets: dict[str, dict]) -> dict[str, dict]:
    """Per source: the manifest's funnel counts, what its shards hold per split, and its tokenizer fertility."""
    rows = {}
    for s in sorted(manifest.sources, key=lambda s: s.id):
        name = s.name
        mine = [r for r in subsets.values() if r["source"] == name]
        chars_kept = sum(r["chars_kept"] for r in mine)
        tokens_by_split = {split: t["tokens_by_source"].get(name, 0) for split, t in splits.items()}
        rows[name] = {
            "id": s.id,
            "weight": s.weight,
            "uris": s.uris,
            "files": s.files,
            "epochs": s.epochs,
            "documents_read": s.documents_read,
            "bytes_read": s.bytes_read,
            "records_read": s.documents_read + dropped_by_step(s.dropped)["bad input"],
            "dropped": dict(s.dropped),
            "dropped_by_step": dropped_by_step(s.dropped),
            "documents_kept": s.documents_kept,
            "tokens_kept": s.tokens_kept,
            "kept_share": s.documents_kept / s.documents_read if s.documents_read else None,
            "chars_read": sum(r["chars_read"] for r in mine),
            "chars_kept": chars_kept,
            # fertility from the build's own kept counts, so both sides of the ratio describe the same documents
            "fertility": sum(r["tokens_kept"] for r in mine) / chars_kept if chars_kept else None,
            "documents_in_shards": sum(t["documents_by_source"].get(name, 0) for t in splits.values()),
            "tokens_in_shards": sum(tokens_by_split.values()),
            "tokens_by_split": tokens_by_split,
            "funnel": funnel(s.documents_read, s.dropped),
        }
    return rows


def mix_stats(manifest: Manifest, splits: dict) -> dict:
    """The recipe's target token shares (weights normalized) and each split's achieved shares, from the recount."""
    target = manifest.mix.target
    total = sum(target.values())
    return {
        "policy": manifest.mix.policy,
        "target": {name: w / total for name, w in target.items()} if total else {},
        "achieved": {
            split: {name: n / t["tokens"] for name, n in t["tokens_by_source"].items()} if t["tokens"] else {}
            for split, t in splits.items()
        },
    }


def build_record(manifest: Manifest, build: dict | None) -> dict:
    """Wall time and throughput per stage: the build's stage records, else the manifest's `stages`."""
    stages = build["stages"] if build is not None else manifest.stages
    # in the order the stages run; a stage this code no longer has (an older build's) after them
    order = sorted(
        stages, key=lambda name: (STAGE_NAMES.index(name) if name in STAGE_NAMES else len(STAGE_NAMES), name)
    )
    rows = {}
    for name in order:
        st = stages[name]
        made = st.get("made_by")  # every output re-used: the timings of the build that made them
        if made:
            st = {**st, **made}
        seconds = float(st.get("seconds", 0.0))
        rows[name] = {
            "seconds": seconds,
            "tasks": int(st.get("tasks", 0)),
            "input_bytes": int(st.get("input_bytes", 0)),
            "documents": int(st.get("documents", 0)),
            # the one speed (pipeline.work.progress.text_speed): MB of input text per second, of the process stage,
            # the only one that reads all the text
            "text_mb_per_s": st["text_bytes"] / seconds / 1e6 if seconds and st.get("text_bytes") else None,
            "documents_per_s": st.get("documents", 0) / seconds if seconds and st.get("documents") else None,
            "reused": int(stages[name].get("skipped", 0)),
            "made_at": made.get("created_at") if made else None,
            # the largest task's peak RSS and what it read: the node size the stage needs (None for older builds)
            "cpu_seconds": st.get("cpu_seconds"),
            "peak_rss_mib": st.get("peak_rss_mib"),
            "largest_task": (st.get("largest_task") or {}).get("input"),
        }
    return {
        "workers": build.get("workers") if build else None,
        "wall_seconds": build.get("wall_seconds") if build else None,
        "stages": rows,
    }


def provenance(manifest: Manifest) -> dict:
    tokenizer = asdict(manifest.tokenizer)
    return {
        "manifest": str(manifest.path),
        "recipe": manifest.recipe.get("name", ""),
        "recipe_sha256": manifest.recipe_sha256,
        "tool_version": manifest.tool_version,
        "created_at": manifest.created_at,
        "dtype": manifest.dtype,
        "tokenizer": {
            k: tokenizer[k] for k in ("uri", "sha256", "vocab_size", "bos_id", "eos_id", "add_bos", "add_eos")
        },
        "input_uris": {s.name: s.uris for s in sorted(manifest.sources, key=lambda s: s.id)},
        "input_files": len(manifest.inputs),
        "quarantine": asdict(manifest.quarantine),
    }


def distributions(hists: dict[str, np.ndarray], build: dict | None) -> dict:
    """Log2 histograms of document length: tokens as the shards hold them (after the mix), characters of the
    kept documents per source (from the build), and the sizes of near-duplicate clusters."""
    chars: dict[str, np.ndarray] = {}
    for record in build["subsets"].values() if build else ():
        if record["documents_kept"]:
            chars[record["source"]] = chars.get(record["source"], 0) + np.asarray(record["char_hist"], dtype=np.int64)
    clusters = build["duplicates"]["cluster_sizes"] if build else {}
    return {
        "length_edges": LENGTH_EDGES,
        "tokens_in_shards": {name: h.tolist() for name, h in sorted(hists.items())},
        "chars_kept": {name: h.tolist() for name, h in sorted(chars.items())},
        "duplicate_clusters": {k: clusters[k] for k in sorted(clusters, key=int)},
        "exact_removed": build["duplicates"]["exact_removed"] if build else None,
        "near_removed": build["duplicates"]["near_removed"] if build else None,
        "removed_similarity": build["duplicates"].get("similarity")
        if build
        else None,  # with verification: cluster members by similarity
    }


def training_shares(sources: dict, subsets: dict, splits: dict) -> None:
    """Adds to each source and subset its tokens in the train split and their share of it. A subset's are
    estimated: its share of its source's kept tokens times the source's train tokens (the mix samples a
    source's documents uniformly, by a seeded hash; the shards record sources, not subsets)."""
    train = splits.get("train", {"tokens": 0, "tokens_by_source": {}})
    total = train["tokens"]
    for name, source in sources.items():
        source["train_tokens"] = train["tokens_by_source"].get(name, 0)
        source["train_share"] = source["train_tokens"] / total if total else None
    for row in subsets.values():
        source = sources.get(row["source"])
        if source is None or not source["tokens_kept"]:
            row["train_tokens"], row["train_share"] = 0, (0.0 if total else None)
            continue
        row["train_tokens"] = round(source["train_tokens"] * row["tokens_kept"] / source["tokens_kept"])
        row["train_share"] = row["train_tokens"] / total if total else None


def token_budget(sources: dict, subsets: dict, splits: dict, budget: int) -> dict:
    """A training run of `budget` tokens over the train split at its achieved mix: how many times it passes
    over the shards, and how many epochs of each source's and subset's unique kept training tokens (kept
    after filters and dedupe, validation documents left out) that is."""
    train_tokens = splits.get("train", {}).get("tokens", 0)
    validation = splits.get("validation", {}).get("tokens_by_source", {})
    rows: dict[str, dict] = {"sources": {}, "subsets": {}}
    unique_share = {}
    for name, source in sources.items():
        unique = max(source["tokens_kept"] - validation.get(name, 0), 0)
        unique_share[name] = unique / source["tokens_kept"] if source["tokens_kept"] else 0.0
        tokens = budget * (source["train_share"] or 0.0)
        rows["sources"][name] = {
            "tokens": tokens,
            "unique_tokens": unique,
            "epochs": tokens / unique if unique else None,
        }
    for key, row in subsets.items():
        unique = round(row["tokens_kept"] * unique_share.get(row["source"], 0.0))
        tokens = budget * (row["train_share"] or 0.0)
        rows["subsets"][key] = {
            "tokens": tokens,
            "unique_tokens": unique,
            "epochs": tokens / unique if unique else None,
        }
    return {
        "tokens": budget,
        "train_tokens": train_tokens,
        "passes": budget / train_tokens if train_tokens else None,
        **rows,
    }


def warnings(splits: dict) -> list[str]:
    """What a person deciding on this corpus should know before training on it."""
    found = []
    validation = splits.get("validation", {}).get("documents", 0)
    if validation < MIN_VALIDATION_DOCUMENTS:
        found.append(
            f"the validation split holds {validation} documents, fewer than {MIN_VALIDATION_DOCUMENTS}: its loss is "
            "too noisy "
            "to compare runs by; add validation files or raise the sources' validation_fraction"
        )
    return found


def _check(problems: list[str], passed: str) -> dict:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return {"ok": not problems, "detail": shown if problems else passed}


def _nonzero(value: object) -> object:
    """Per-source counts compare without their zero entries (a build may list an empty source or leave it out)."""
    return {k: v for k, v in value.items() if v} if isinstance(value, dict) else value


def _differences(what: str, recount: dict, recorded: dict, keys: tuple[str, ...]) -> list[str]:
    return [
        f"{what}: {key} {recount[key]} recounted, {recorded[key]} in the manifest"
        for key in keys
        if _nonzero(recount[key]) != _nonzero(recorded[key])
    ]


def checks(
    manifest: Manifest, shards: dict, splits: dict, sources: dict, subsets: dict, build: dict | None
) -> dict[str, dict]:
    """What a person should be able to trust before reading the numbers: checksums, and recounts that agree."""
    counted = ("documents", "tokens", "tokens_by_source")
    hashed = sum(r["bin_status"] == "ok" for r in shards.values())
    entries = {ref.entry.bin: asdict(ref.entry) for split in manifest.splits for ref in manifest.shards(split)}
    unaccounted = {name: s["funnel"][FUNNEL_STEPS[-1]]["left"] - s["documents_kept"] for name, s in sources.items()}
    result = {
        "shard indexes match their sha256": _check(
            [f"{b}: index {r['idx_status']}" for b, r in shards.items() if r["idx_status"] != "ok"],
            f"{len(shards)} of {len(shards)}",
        ),
        "shard token files match the manifest": _check(
            [f"{b}: {r['bin_status']}" for b, r in shards.items() if r["bin_status"] not in ("ok", "size ok")],
            f"{hashed} of {len(shards)} by sha256" + ("" if hashed == len(shards) else ", the rest by size"),
        ),
        "shard recounts equal the manifest": _check(
            [p for b, r in shards.items() for p in _differences(b, r, entries[b], counted)],
            f"documents, tokens and tokens per source of {len(shards)} shards",
        ),
        "split totals equal the manifest": _check(
            [
                p
                for split, t in splits.items()
                for p in _differences(f"split {split}", t, asdict(manifest.splits[split]), counted)
            ],
            ", ".join(splits),
        ),
        "shards hold only the manifest's sources": _check(
            sorted(
                {
                    n
                    for t in splits.values()
                    for n, docs in t["documents_by_source"].items()
                    if docs and n not in sources
                }
            ),
            ", ".join(sources),
        ),
        "documents read = filtered + duplicates + kept": _check(
            [f"{name}: {n:+} documents read but neither dropped nor kept" for name, n in unaccounted.items() if n],
            ", ".join(sources),
        ),
    }
    if build is not None:
        kept = {
            name: {
                k: sum(r[k] for r in subsets.values() if r["source"] == name) for k in ("documents_kept", "tokens_kept")
            }
            for name in sources
        }
        result[f"{BUILD_STATS} agrees with the manifest"] = _check(
            [
                p
                for name, s in sources.items()
                for p in _differences(name, kept[name], s, ("documents_kept", "tokens_kept"))
            ],
            "kept documents and tokens per source",
        )
    return result


def headline(sources: dict, splits: dict, shards: dict, build: dict, check_rows: dict) -> dict:
    read = sum(s["documents_read"] for s in sources.values())
    bytes_read = sum(s["bytes_read"] for s in sources.values())
    wall = build["wall_seconds"]
    return {
        "tokens": sum(t["tokens"] for t in splits.values()),
        "documents": sum(t["documents"] for t in splits.values()),
        "tokens_by_split": {split: t["tokens"] for split, t in splits.items()},
        "documents_read": read,
        "bytes_read": bytes_read,
        "documents_kept": sum(s["documents_kept"] for s in sources.values()),
        "kept_share": sum(s["documents_kept"] for s in sources.values()) / read if read else None,
        "shards": len(shards),
        "bytes_on_disk": sum(r["bin_bytes"] + r["idx_bytes"] for r in shards.values()),
        "wall_seconds": wall,
        "workers": build["workers"],
        "text_mb_per_s": build["stages"].get("process", {}).get("text_mb_per_s"),
        "checks_passed": sum(c["ok"] for c in check_rows.values()),
        "checks": len(check_rows),
    }


def compute_stats(manifest_path: Path, *, verify_bins: bool = True, budget: int = DEFAULT_BUDGET_TOKENS) -> dict:
    """Everything the report shows, as one JSON-able dict (written as stats.json)."""
    manifest = load(manifest_path)
    build = read_build_stats(manifest.root / BUILD_STATS)
    shard_rows, splits, hists = scan_shards(manifest, verify_bins)
    subsets = subset_rows(manifest, build)
    sources = source_rows(manifest, splits, subsets)
    build_rec = build_record(manifest, build)
    check_rows = checks(manifest, shard_rows, splits, sources, subsets, build)
    training_shares(sources, subsets, splits)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "has_build_stats": build is not None,
        "headline": headline(sources, splits, shard_rows, build_rec, check_rows),
        "sources": sources,
        "subsets": subsets,
        "drop_reasons": drop_reasons(sources, subsets),
        "splits": splits,
        "mix": mix_stats(manifest, splits),
        "budget": token_budget(sources, subsets, splits, budget),
        "warnings": warnings(splits),
        "distributions": distributions(hists, build),
        "quarantine": asdict(manifest.quarantine),
        "dropped_samples": read_dropped_samples(manifest.root / DROPPED_SAMPLES),
        "decontamination": read_decontamination(manifest.root, manifest.decontamination),
        "shards": shard_rows,
        "build": build_rec,
        "provenance": provenance(manifest),
        "checks": check_rows,
    }


def write_report(
    manifest_path: Path,
    out_dir: Path,
    compare: Path | None = None,
    *,
    verify_bins: bool = True,
    budget: int = DEFAULT_BUDGET_TOKENS,
) -> Path:
    """Write report.html, stats.json and summary.md into `out_dir`; returns the report.html path.
    `compare`: a second manifest shown side by side. `verify_bins=False` checks token files by size only
    (the build passes it: it hashed them a moment ago). `budget`: training tokens of the token-budget view."""
    stats = compute_stats(Path(manifest_path), verify_bins=verify_bins, budget=budget)
    other = compute_stats(Path(compare), verify_bins=verify_bins, budget=budget) if compare else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").write_text(json.dumps({**stats, "compare": other}, indent=2) + "\n")
    (out_dir / "summary.md").write_text(render_summary(stats, other))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(stats, other))
    return html_path


def parse_tokens(text: str) -> int:
    """A token count as people write it: 3T, 500B, 1.5M, 2e9, 3000000."""
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    scale = units.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count; write e.g. 3T, 500B or 2e9") from None
    if not 1 <= value < 1e18:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: give a token count from 1 to below 1e18")
    return int(value)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill stats",
        description="Dataset statistics report of a built corpus: report.html, stats.json, summary.md.",
    )
    parser.add_argument("manifest", type=Path, help="manifest.json of a build")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for report.html, stats.json and summary.md (default: report/ beside the manifest)",
    )
    parser.add_argument(
        "--compare", type=Path, metavar="MANIFEST2", help="a second build's manifest, shown side by side"
    )
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help="check shard token files by size, skip their sha256 (reading every byte of a large corpus takes a while)",
    )
    parser.add_argument(
        "--screenshot", type=Path, metavar="PNG", help="also save a picture of the whole report page (needs chromium)"
    )
    parser.add_argument(
        "--budget",
        type=parse_tokens,
        default=DEFAULT_BUDGET_TOKENS,
        metavar="TOKENS",
        help="training tokens of the token-budget view, e.g. 3T, 500B, 2e9 (default 3T, TinyLlama's)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (args.manifest if args.manifest.is_dir() else args.manifest.parent) / "report"
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: is a file; give a folder for report.html, stats.json and summary.md")
    try:
        html_path = write_report(
            args.manifest, args.out, args.compare, verify_bins=not args.sizes_only, budget=args.budget
        )
        if args.screenshot:
            screenshot(html_path, args.screenshot)
    except (ManifestError, StatsError, ReportError, OSError) as e:
        print(f"tokenmill stats: {e}", file=sys.stderr)
        return 2
    written = json.loads((args.out / "stats.json").read_text())
    for warning in written["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    checks_run = written["checks"]
    failed = {name: c for name, c in checks_run.items() if not c["ok"]}
    for name, c in failed.items():
        print(f"check failed: {name}: {c['detail']}", file=sys.stderr)
    print(html_path)
    return 1 if failed else 0
