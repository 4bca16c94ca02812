"""The end of a build: manifest.json (written last), quarantine.jsonl, build_stats.json and the console summary,
all assembled from the stages' done records and outputs."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import io
from dataclasses import dataclass, field

import numpy as np

from manifests import manifest as manifest_io
from manifests.manifest import (
    DomainEntry,
    Funnel,
    InputEntry,
    Manifest,
    MixEntry,
    Provenance,
    QuarantineEntry,
    SourceEntry,
)
from manifests.outputs import (
    BUILD_STATS,
    DECONTAMINATION,
    DROPPED_SAMPLES,
    MANIFEST,
    QUARANTINE,
    SHARDS_PREFIX,
    TOKENIZER_MODEL,
)
from manifests.shards import ShardEntry, dtype_name
from pipeline import __version__
from pipeline.build.inputs import InputFile
from pipeline.build.made_by import add_made_by
from pipeline.build.recipe import Recipe
from pipeline.tasks import process as tasks
from pipeline.tasks import samples as dropped_samples
from pipeline.tasks.decontaminate import decontamination_outputs
from pipeline.tasks.dedupe import CLUSTER_SIZES
from pipeline.tasks.lengths import BUCKETS, LENGTH_EDGES
from pipeline.work.progress import text_speed
from pipeline.work.store import Store, uses_record
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE
from stages.tokenize import Tokenizer

SIZES_PIECE = 2_000_000  # cluster sizes the driver reads at a time: 16 MB


@dataclass(frozen=True, slots=True)
class StageResults:
    """What the stages left for the finalizer: summaries from the done records, and where the outputs are.
    Nothing here grows with the documents or the input files: funnels per key group, the rest per key group,
    subset or shard."""

    funnels: list[dict]  # per key group and source: {"source", "funnels": per subset}, summed over its files
    filter_samples: list  # the filters' first removed documents per source and reason (samples.DroppedSample)
    kept: dict[str, dict]  # per "source/subset": duplicates removed, kept documents, histograms (count tasks)
    resolved_folder: str
    resolved: dict  # the resolve task's done record
    key_groups: list[str]  # their folders hold the quarantine records of their files
    key_group_records: list[dict]
    samples_folder: str  # the duplicates' samples of dropped_samples.jsonl
    factors: dict[str, dict[int, float]]  # per split and domain id (source id without domains): taken / kept tokens
    shards: dict[str, list[ShardEntry]]  # split -> manifest entries of its shards, in order
    shards_folder: str  # the output folder holding this mix's shards
    keys: dict[str, str]  # the dedupe and mix work keys: what the shards were made from
    used: list[str]  # every work folder the build used (recorded for `tokenmill work`)
    timings: dict[str, dict]
    workers: int
    decontamination: tuple[str, dict] | None = None  # the index task's folder and done record, when decontaminating
    decontaminated: list[dict] = ()  # then per input file with matches: {"source", "path", "decontamination"}
    domain_tokens: dict[str, dict[int, int]] = field(default_factory=dict)  # per split and domain id: tokens kept


def finalize(
    recipe: Recipe,
    inputs: list[InputFile],
    tokenizer: Tokenizer,
    out: Store,
    work: Store,
    results: StageResults,
    wall: float,
) -> Manifest:
    """Writes the tokenizer copy, quarantine, build stats and, last, the manifest; returns the manifest."""
    subsets = _subset_table(results.funnels, results.kept)
    timings = {stage: dict(t) for stage, t in results.timings.items()}
    timings["process"]["text_bytes"] = sum(r["bytes_read"] for r in subsets.values())
    add_made_by(timings, results.used, work)  # a re-used stage's report shows the timings of the run that made it
    out.write_bytes(TOKENIZER_MODEL, tokenizer.model_bytes)
    quarantine = _merge_quarantine(work, out, results)
    decontamination = None
    if results.decontamination:
        decontamination = decontamination_outputs(work, results.decontaminated, *results.decontamination)
    if decontamination is not None:
        out.write_json(DECONTAMINATION, decontamination.report)
    elif out.exists(DECONTAMINATION):  # an earlier build's into this output, with eval sets this one has not
        out.fs.rm(out.path(DECONTAMINATION))
    decontaminated = decontamination.sample_lines if decontamination else b""
    out.write_bytes(
        DROPPED_SAMPLES,
        dropped_samples.file_bytes(results.filter_samples, work, results.samples_folder, decontaminated),
    )
    out.write_json(BUILD_STATS, _build_stats(work, results, subsets, timings, wall))
    manifest = _manifest(recipe, inputs, tokenizer, results, subsets, timings, quarantine)
    if decontamination is not None:
        manifest.decontamination = decontamination.manifest
    reused = {stage: t["skipped"] for stage, t in timings.items()}
    manifest.provenance = Provenance(work=work.url(), **results.keys, reused=reused)
    manifest.path = out.url(MANIFEST)
    out.write_bytes(MANIFEST, manifest_io.dumps(manifest, manifest.path).encode())
    _remove_earlier_shards(out, results.shards_folder)
    use = {"manifest": manifest.path, "created_at": manifest.created_at, "folders": results.used}
    work.write_json(uses_record(manifest.path), use)
    return manifest


def _remove_earlier_shards(out: Store, current: str) -> None:
    """Shard folders of earlier builds into this output: listed by no manifest now that this one replaced theirs."""
    for path in out.fs.ls(out.root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(SHARDS_PREFIX) and name != current:
            out.fs.rm(path, recursive=True)


def _manifest(
    recipe: Recipe,
    inputs: list[InputFile],
    tokenizer: Tokenizer,
    results: StageResults,
    subsets: dict,
    timings: dict,
    quarantine: QuarantineEntry,
) -> Manifest:
    names = [s.name for s in recipe.sources]
    domains = recipe.domain_list() if recipe.domains else None
    splits = manifest_io.splits_of(results.shards, names, [d.name for d in domains] if domains else None)
    total_weight = sum(s.weight for s in recipe.sources)
    manifest = Manifest(
        format=manifest_io.FORMAT,
        format_version=manifest_io.FORMAT_VERSION,
        tool_version=__version__,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256(),
        tokenizer=tokenizer.manifest_entry(
            recipe.tokenizer.model or f"trained:{TOKENIZER_MODEL}", path=TOKENIZER_MODEL
        ),
        dtype=dtype_name(tokenizer.dtype),
        inputs=[InputEntry(source=i.source.name, split=i.split, path=i.rel_path) for i in inputs],
        sources=_source_entries(recipe, inputs, subsets, results.factors.get("train", {})),
        splits=splits,
        mix=MixEntry(
            policy=recipe.mix.policy,
            target={s.name: s.weight / total_weight for s in recipe.sources},
            achieved={
                split: {n: (v.tokens_by_source[n] / v.tokens if v.tokens else 0.0) for n in names}
                for split, v in splits.items()
            },
        ),
        stages=timings,
        quarantine=quarantine,
    )
    if domains:
        _add_domains(manifest, domains, results)
    return manifest


def _add_domains(manifest: Manifest, domains: list, results: StageResults) -> None:
    """A build with domains: each domain's kept tokens and epochs (train), its target and achieved shares; the
    sources' targets and epochs are their domains' sums."""
    total_weight = sum(d.weight for d in domains)
    kept, factors = results.domain_tokens.get("train", {}), results.factors.get("train", {})
    manifest.domains = [
        DomainEntry(
            name=d.name,
            id=d.id,
            source=d.source,
            subsets=list(d.subsets or []),
            weight=d.weight,
            tokens_kept={split: per.get(d.id, 0) for split, per in results.domain_tokens.items()},
            epochs=factors.get(d.id, 0.0),
        )
        for d in domains
    ]
    mix = manifest.mix
    mix.target = {s: sum(d.weight for d in domains if d.source == s) / total_weight for s in mix.target}
    mix.target_by_domain = {d.name: d.weight / total_weight for d in domains}
    mix.achieved_by_domain = {
        split: {n: (t / v.tokens if v.tokens else 0.0) for n, t in v.tokens_by_domain.items()}
        for split, v in manifest.splits.items()
    }
    for source in manifest.sources:
        mine = [d for d in domains if d.source == source.name]
        tokens = sum(kept.get(d.id, 0) for d in mine)
        source.epochs = sum(factors.get(d.id, 0.0) * kept.get(d.id, 0) for d in mine) / tokens if tokens else 0.0


def _cluster_size_histogram(work: Store, rel: str) -> dict[str, int]:
    """Clusters per size, from the .npy int64 vector `rel` (one entry a cluster: ~450M at a crawl snapshot of 2.5B
    documents, 3.6 GB), read SIZES_PIECE values at a time: the driver holds one piece, not the vector."""
    head = io.BytesIO(work.read_range(rel, 0, 4096))
    np.lib.format.read_magic(head)
    (clusters,), _, dtype = np.lib.format.read_array_header_1_0(head)
    start, histogram = head.tell(), collections.Counter()
    for first in range(0, clusters, SIZES_PIECE):
        piece = work.read_range(
            rel, start + first * dtype.itemsize, start + min(first + SIZES_PIECE, clusters) * dtype.itemsize
        )
        values, counts = np.unique(np.frombuffer(piece, dtype), return_counts=True)
        histogram.update(dict(zip(values.tolist(), counts.tolist())))
    return {str(size): histogram[size] for size in sorted(histogram)}


def _build_stats(work: Store, results: StageResults, subsets: dict, timings: dict, wall: float) -> dict:
    return {
        "format": "tokenmill.build_stats",
        "version": 1,
        "histogram_edges": {"chars": LENGTH_EDGES, "tokens": LENGTH_EDGES},
        "subsets": subsets,
        "duplicates": {
            "exact_removed": results.resolved["exact_removed"],
            "near_removed": results.resolved["near_removed"],
            "cluster_sizes": _cluster_size_histogram(work, f"{results.resolved_folder}/{CLUSTER_SIZES}"),
            **({"similarity": results.resolved["similarity"]} if "similarity" in results.resolved else {}),
        },
        "stages": timings,
        "workers": results.workers,
        "wall_seconds": round(wall, 3),
    }


def _subset_table(funnels: list[dict], kept: dict[str, dict]) -> dict[str, dict]:
    """Funnel per "source/subset": read, dropped by reason, kept, histograms (build_stats.json `subsets`)."""
    table: dict[str, dict] = {}
    for r in funnels:
        for subset, f in r["funnels"].items():
            key = f"{r['source']}/{subset}"
            row = table.setdefault(
                key,
                {
                    "source": r["source"],
                    "subset": subset,
                    "documents_read": 0,
                    "bytes_read": 0,
                    "chars_read": 0,
                    "dropped": {},
                },
            )
            for name in ("documents_read", "bytes_read", "chars_read"):
                row[name] += f[name]
            for reason, n in f["dropped"].items():
                row["dropped"][reason] = row["dropped"].get(reason, 0) + n
    empty_hist = [0] * BUCKETS
    for key, row in table.items():
        k = kept.get(key, {})
        for reason in (EXACT_DUPLICATE, NEAR_DUPLICATE):
            if k.get(reason):
                row["dropped"][reason] = k[reason]
        row["dropped"] = dict(sorted(row["dropped"].items()))
        for name in ("documents_kept", "chars_kept", "tokens_kept"):
            row[name] = k.get(name, 0)
        row["char_hist"] = k.get("char_hist", empty_hist)
        row["token_hist"] = k.get("token_hist", empty_hist)
    return dict(sorted(table.items()))


def _merge_quarantine(work: Store, out: Store, results: StageResults) -> QuarantineEntry:
    """The key groups' quarantine files, concatenated in input order: one read per key group. Its size grows
    with the bad records, which the build keeps whole."""
    data = b"".join(work.read_bytes(f"{folder}/{tasks.QUARANTINE}") for folder in results.key_groups)
    out.write_bytes(QUARANTINE, data)
    by_reason: dict[str, int] = {}
    for record in results.key_group_records:
        for reason, n in record["by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    records = sum(r["quarantined"] for r in results.key_group_records)
    return QuarantineEntry(path=QUARANTINE, records=records, by_reason=dict(sorted(by_reason.items())))


def _source_entries(
    recipe: Recipe, inputs: list[InputFile], subsets: dict[str, dict], train_factors: dict[int, float]
) -> list[SourceEntry]:
    entries = []
    for sid, source in enumerate(recipe.sources):
        rows = {k.split("/", 1)[1]: v for k, v in subsets.items() if v["source"] == source.name}
        dropped: dict[str, int] = {}
        for row in rows.values():
            for reason, n in row["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + n
        entries.append(
            SourceEntry(
                name=source.name,
                id=sid,
                uris=[f"{source.root.rstrip('/')}/{p}" for p in source.validation + source.train],
                weight=source.weight,
                files=sum(1 for i in inputs if i.source.name == source.name),
                documents_read=sum(r["documents_read"] for r in rows.values()),
                bytes_read=sum(r["bytes_read"] for r in rows.values()),
                dropped=dict(sorted(dropped.items())),
                documents_kept=sum(r["documents_kept"] for r in rows.values()),
                tokens_kept=sum(r["tokens_kept"] for r in rows.values()),
                epochs=train_factors.get(sid, 0.0),
                subsets={
                    name: Funnel(**{f.name: row[f.name] for f in dataclasses.fields(Funnel)})
                    for name, row in rows.items()
                },
            )
        )
    return entries


def print_summary(manifest_url: str, report: str | None, seconds: float) -> None:
    manifest = manifest_io.load(manifest_url)
    manifest_url = manifest_url.removeprefix("file://")
    base = manifest_url.rsplit("/", 1)[0]
    text_mb = manifest.stages["process"].get("text_bytes", 0) / 1e6
    process = manifest.stages["process"]
    if process["skipped"]:  # outputs re-used from an earlier run: rates over work done earlier would mean nothing
        rate = f"{process['skipped']} of {process['tasks']} input files' process outputs re-used"
        made = process.get("made_by")
        if made and made.get("seconds") and made.get("text_bytes"):
            rate += f" (made at {text_speed(made['text_bytes'], made['seconds'])} by the build of {made['created_at']})"
    else:
        rate = (
            f"process stage {text_speed(text_mb * 1e6, process['seconds'])} "
            f"({text_mb / seconds:.2f} MB/s over the whole build, start-up included)"
        )
    print(f"\nbuilt {manifest.recipe['name']} in {seconds:.1f}s: {text_mb:.1f} MB of input text, {rate}")
    for split, info in manifest.splits.items():
        mix = ", ".join(f"{k} {v:.1%}" for k, v in manifest.mix.achieved[split].items())
        print(f"  {split:<10} {len(info.shards)} shards  {info.documents:>8,} docs  {info.tokens:>12,} tokens  ({mix})")
    folders = sorted(
        {f"{base}/{shard.bin.rsplit('/', 1)[0]}/" for info in manifest.splits.values() for shard in info.shards}
    )
    print(f"  shards     {', '.join(folders)}")
    print(f"  manifest   {manifest_url}")
    print(f"  quarantine {base}/{manifest.quarantine.path}  ({manifest.quarantine.records} bad records)")
    if report:
        print(f"  report     {report}")
