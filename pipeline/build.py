"""`tokenmill build RECIPE --out DIR`: the corpus build as Ray work.

    list inputs -> [process: fetch, filter, dedupe keys, tokenize; one task per input file]
                -> [dedupe: one task per key partition] -> [resolve clusters] -> [plan the mix]
                -> [write shards: one task per shard] -> manifest.json + quarantine + build stats + report

Every task is a plain function in `pipeline.tasks`; this module only places them on Ray, skips what a
previous run finished (done records in the ledger), shows progress and writes the manifest last.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np

from manifests import manifest as manifest_io
from pipeline import __version__
from pipeline import tasks
from pipeline.ledger import Store
from pipeline.progress import EventLog, StageProgress
from pipeline.recipe import Recipe, RecipeError, load_recipe
from stages import dedupe as dedupe_stage
from stages.filter import build_filters
from manifests.shards import dtype_name
from stages.tokenize import Tokenizer, TokenizerError, read_model_bytes, train_model


class BuildError(RuntimeError):
    pass


def list_inputs(recipe: Recipe) -> list[tasks.InputFile]:
    """Every input file, in the build's canonical order: validation files of all sources, then training
    files. Refuses a source whose patterns match nothing, naming the field."""
    found: dict[str, list[tuple[str, str, str]]] = {split: [] for split in tasks.SPLITS}
    for source in recipe.sources:
        try:
            fs, root = fsspec.core.url_to_fs(source.root)
        except (ImportError, ValueError) as e:
            raise RecipeError(f"recipe field `sources[{source.name}].root`: {source.root!r} cannot be opened ({e})") from None
        root = root.rstrip("/")
        for split, patterns in (("validation", source.validation), ("train", source.train)):
            try:
                paths = sorted({p for pattern in patterns for p in fs.glob(f"{root}/{pattern}") if fs.isfile(p)})
            except OSError as e:  # host unreachable, access denied: nothing can be built from this source
                raise RecipeError(f"recipe field `sources[{source.name}].root`: {source.root!r} cannot be listed ({e}); check the address, the network and the credentials") from None
            if patterns and not paths:
                raise RecipeError(f"recipe field `sources[{source.name}].{split}`: no file under {source.root!r} matches {patterns}; check the root and the patterns")
            found[split] += [(source.name, fs.unstrip_protocol(p), p[len(root) + 1 :]) for p in paths]
    inputs = []
    for split in ("validation", "train"):
        for name, url, rel in found[split]:
            inputs.append(tasks.InputFile(file_index=len(inputs), source=recipe.source(name), url=url, rel_path=rel, split=split))
    return inputs


def validate_recipe(recipe: Recipe) -> None:
    """Everything that can be checked before any work starts."""
    for source in recipe.sources:
        build_filters(source)


@dataclass(slots=True)
class Runner:
    """Runs a stage's tasks on Ray, at most `workers` at a time, skipping tasks the ledger marks done."""

    work: Store
    workers: int
    log: EventLog
    timings: dict[str, dict] = field(default_factory=dict)

    def run(self, stage: str, items: list[tuple[str, object, tuple, int]]) -> list[dict]:
        """items: (task folder, function, arguments, input bytes). Returns records in item order."""
        import ray

        remote = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(_call)
        progress = StageProgress(stage, len(items), self.log)
        records: list[dict | None] = [self.work.done(name) for name, *_ in items]
        progress.skip(sum(r is not None for r in records))
        pending = [i for i, r in enumerate(records) if r is None]
        in_flight: dict = {}
        started = time.perf_counter()
        while pending or in_flight:
            while pending and len(in_flight) < self.workers:
                i = pending.pop(0)
                name, fn, args, _ = items[i]
                # named after its task folder: workers show up as `ray::process/0000042` in ps and the dashboard
                in_flight[remote.options(name=name).remote(fn, *args)] = i
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i = in_flight.pop(ready[0])
            try:
                records[i] = ray.get(ready[0])
            except Exception as e:  # a task that failed after its retries: name it and stop
                # an OSError (disk full, store unreachable) names its path, which is all a person needs; anything
                # else is a bug and keeps Ray's remote traceback
                cause = getattr(e, "cause", None)
                raise BuildError(f"[{stage}] task {items[i][0]} failed: {cause if isinstance(cause, OSError) else e}") from e
            self.log.event("task_done", stage=stage, task=items[i][0], seconds=round(records[i].get("seconds", 0), 3))
            progress.advance(records[i].get("documents", 0), items[i][3])
        self.timings[stage] = {
            "seconds": round(time.perf_counter() - started, 3),
            "task_seconds": round(sum(r.get("seconds", 0) for r in records), 3),
            "tasks": len(items),
            "skipped": progress.skipped,
            "documents": sum(r.get("documents", 0) for r in records),
            "input_bytes": sum(item[3] for item in items),
        }
        self.log.event("stage_done", stage=stage, **self.timings[stage])
        return records


def _call(fn, *args):
    return fn(*args)


def open_tokenizer(recipe: Recipe, inputs: list[tasks.InputFile], out: Store) -> Tokenizer:
    cfg = recipe.tokenizer
    if cfg.train is None:
        try:
            return Tokenizer.from_bytes(read_model_bytes(cfg.model), cfg.add_bos, cfg.add_eos)
        except TokenizerError as e:
            raise RecipeError(f"recipe field `tokenizer.model`: {e}") from None
    if out.exists("tokenizer.model"):  # trained by an earlier run of this build
        return Tokenizer.from_bytes(out.read_bytes("tokenizer.model"), cfg.add_bos, cfg.add_eos)
    model = train_model(_training_texts(inputs, recipe), cfg.train.vocab_size, cfg.train.model_type, cfg.train.sample_documents)
    out.write_bytes("tokenizer.model", model)
    return Tokenizer.from_bytes(model, cfg.add_bos, cfg.add_eos)


def _training_texts(inputs: list[tasks.InputFile], recipe: Recipe):
    """The first `sample_documents` documents that pass the filters, in canonical order (deterministic)."""
    from stages.document import DocBatch
    from stages.fetch import read_documents
    from stages.filter import apply_filters

    left = recipe.tokenizer.train.sample_documents
    filters = {s.name: build_filters(s) for s in recipe.sources}
    for task in inputs:
        fs, path = fsspec.core.url_to_fs(task.url)
        for item in read_documents(fs, path, task.rel_path, task.source, task.file_index, recipe.batch_documents):
            if isinstance(item, DocBatch):
                kept, _ = apply_filters(item, filters[task.source.name])
                for text in kept.texts[:left]:
                    yield text
                left -= min(left, len(kept))
            if left <= 0:
                return


def _subset_table(records: list[dict], kept: dict[str, dict]) -> dict[str, dict]:
    """Funnel per "source/subset": read, dropped by reason, kept, histograms (build_stats.json `subsets`)."""
    table: dict[str, dict] = {}
    for r in records:
        for subset, f in r["funnels"].items():
            key = f"{r['source']}/{subset}"
            row = table.setdefault(key, {"source": r["source"], "subset": subset, "documents_read": 0, "bytes_read": 0, "chars_read": 0, "dropped": {}})
            for name in ("documents_read", "bytes_read", "chars_read"):
                row[name] += f[name]
            for reason, n in f["dropped"].items():
                row["dropped"][reason] = row["dropped"].get(reason, 0) + n
    empty_hist = [0] * (len(tasks.HIST_EDGES) - 1)
    for key, row in table.items():
        k = kept.get(key, {})
        for reason in ("exact_duplicate", "near_duplicate"):
            if k.get(reason):
                row["dropped"][reason] = k[reason]
        row["dropped"] = dict(sorted(row["dropped"].items()))
        for name in ("documents_kept", "chars_kept", "tokens_kept"):
            row[name] = k.get(name, 0)
        row["char_hist"] = k.get("char_hist", empty_hist)
        row["token_hist"] = k.get("token_hist", empty_hist)
    return dict(sorted(table.items()))


def _merge_quarantine(work: Store, out: Store, records: list[dict]) -> dict:
    by_reason: dict[str, int] = {}
    lines = []
    for r in records:
        for line in work.read_bytes(f"process/{r['file_index']:07d}/quarantine.jsonl").decode().splitlines():
            lines.append(line)
            reason = json.loads(line)["reason"]
            by_reason[reason] = by_reason.get(reason, 0) + 1
    out.write_bytes("quarantine.jsonl", "".join(line + "\n" for line in lines).encode())
    return {"path": "quarantine.jsonl", "records": len(lines), "by_reason": dict(sorted(by_reason.items()))}


def _source_entries(recipe: Recipe, inputs, subsets: dict[str, dict], mix_record: dict) -> list[dict]:
    entries = []
    for sid, source in enumerate(recipe.sources):
        rows = {k.split("/", 1)[1]: v for k, v in subsets.items() if v["source"] == source.name}
        dropped: dict[str, int] = {}
        for row in rows.values():
            for reason, n in row["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + n
        epochs = mix_record["splits"].get("train", {}).get("epochs", {}).get(str(sid), 0.0)
        entries.append({
            "name": source.name,
            "id": sid,
            "uris": [f"{source.root.rstrip('/')}/{p}" for p in source.validation + source.train],
            "weight": source.weight,
            "files": sum(1 for i in inputs if i.source.name == source.name),
            "documents_read": sum(r["documents_read"] for r in rows.values()),
            "bytes_read": sum(r["bytes_read"] for r in rows.values()),
            "dropped": dict(sorted(dropped.items())),
            "documents_kept": sum(r["documents_kept"] for r in rows.values()),
            "tokens_kept": sum(r["tokens_kept"] for r in rows.values()),
            "epochs": epochs,
            "subsets": {name: {k: row[k] for k in ("documents_read", "bytes_read", "dropped", "documents_kept", "tokens_kept")} for name, row in rows.items()},
        })
    return entries


def _start_ray(address: str | None, workers: int | None) -> int:
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job: join that cluster
    if not address and "ray" not in sys.modules:
        # On Linux a local Ray takes the machine's network address (ray.init turns 127.0.0.1 into it) and its
        # GCS, raylet, workers and agents listen on every interface. With this flag off, read when Ray is first
        # imported (so only before that), the embedded Ray is private to this machine: every server binds to
        # 127.0.0.1. A user who sets the variable keeps their choice; a build that joins a cluster never sets it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            # Embedded, private to this process: no dashboard.
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    return workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def build(recipe: Recipe, out_url: str, workers: int | None = None, address: str | None = None, console: bool = True) -> str:
    """Run (or resume) a build; returns the manifest's URL."""
    started = time.perf_counter()
    validate_recipe(recipe)
    inputs = list_inputs(recipe)
    out = Store.at(out_url)
    out.fs.makedirs(out.root, exist_ok=True)
    tokenizer = open_tokenizer(recipe, inputs, out)
    work = out.child("work", hashlib.sha256(f"{recipe.sha256()}:{tokenizer.sha256()}".encode()).hexdigest()[:12])
    log = EventLog(out.path("build.log.jsonl") if out.is_local else None, console)
    workers = _start_ray(address, workers)
    log.say(f"tokenmill build {recipe.name}: {len(inputs)} input files, {workers} workers, work dir {work.url()}")
    runner = Runner(work, workers, log)
    records = _run_stages(recipe, inputs, tokenizer, runner, work, out)
    manifest = _finalize(recipe, inputs, tokenizer, out, work, runner, records, time.perf_counter() - started)
    log.say(f"manifest: {out.url('manifest.json')}  ({sum(s['tokens'] for s in manifest['splits'].values()):,} tokens)")
    log.close()
    return out.url("manifest.json")


def _run_stages(recipe: Recipe, inputs, tokenizer: Tokenizer, runner: Runner, work: Store, out: Store) -> dict:
    import ray

    tokenizer_ref = ray.put(tokenizer)
    sizes = [fsspec.core.url_to_fs(i.url)[0].size(i.url) for i in inputs]
    processed = runner.run("process", [
        (f"process/{i.file_index:07d}", tasks.process_file, (i, work, tokenizer_ref, recipe.dedupe, recipe.batch_documents), size)
        for i, size in zip(inputs, sizes)
    ])
    partitions = recipe.dedupe.partitions if dedupe_stage.key_slots(recipe.dedupe) else 0
    runner.run("dedupe", [(f"dedupe/partition-{p:05d}", tasks.dedupe_partition, (p, work, processed), 0) for p in range(partitions)])
    resolved = runner.run("resolve", [("dedupe/resolved", tasks.resolve_duplicates, (work, partitions, recipe.dedupe), 0)])[0]
    source_ids = {s.name: i for i, s in enumerate(recipe.sources)}
    weights = {i: s.weight for i, s in enumerate(recipe.sources)}
    mixed = runner.run("mix", [("mix", tasks.plan_mix, (work, processed, source_ids, weights, recipe.mix), 0)])[0]
    names = [s.name for s in recipe.sources]
    shard_items = [
        (f"shards/{split}-{n:05d}", tasks.write_shard, (split, n, work, out, dtype_name(tokenizer.dtype), names), 0)
        for split in tasks.SPLITS if split in mixed["splits"] for n in range(mixed["splits"][split]["shards"])
    ]
    shard_records = runner.run("shard", shard_items)
    shards: dict[str, list[dict]] = {}
    for (name, _, args, _), record in zip(shard_items, shard_records):
        shards.setdefault(args[0], []).append(record.get("entry", record))
    return {"processed": processed, "resolved": resolved, "mixed": mixed, "shards": shards}


def _finalize(recipe: Recipe, inputs, tokenizer: Tokenizer, out: Store, work: Store, runner: Runner, records: dict, wall: float) -> dict:
    processed = records["processed"]
    removed = tasks.load_npy(work, "dedupe/resolved/removed.npy")
    removed_exact = tasks.load_npy(work, "dedupe/resolved/removed_exact.npy")
    subsets = _subset_table(processed, tasks.summarize_kept(work, processed, removed, removed_exact))
    names = [s.name for s in recipe.sources]
    splits = manifest_io.split_entries(records["shards"], names)
    total_weight = sum(s.weight for s in recipe.sources)
    out.write_bytes("tokenizer.model", tokenizer.model_bytes)
    stages_timing = dict(runner.timings)
    text_bytes = sum(r["bytes_read"] for r in subsets.values())
    stages_timing["process"]["text_bytes"] = text_bytes
    manifest = {
        "format": manifest_io.FORMAT,
        "format_version": manifest_io.FORMAT_VERSION,
        "tool_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "tokenizer": {
            "uri": recipe.tokenizer.model or "trained:tokenizer.model",
            "path": "tokenizer.model",
            "sha256": tokenizer.sha256(),
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "add_bos": recipe.tokenizer.add_bos,
            "add_eos": recipe.tokenizer.add_eos,
        },
        "dtype": dtype_name(tokenizer.dtype),
        "inputs": [{"source": i.source.name, "split": i.split, "path": i.rel_path} for i in inputs],
        "sources": _source_entries(recipe, inputs, subsets, records["mixed"]),
        "splits": splits,
        "mix": {
            "policy": recipe.mix.policy,
            "target": {s.name: s.weight / total_weight for s in recipe.sources},
            "achieved": {split: {n: (v["tokens_by_source"][n] / v["tokens"] if v["tokens"] else 0.0) for n in names} for split, v in splits.items()},
        },
        "stages": stages_timing,
        "quarantine": _merge_quarantine(work, out, processed),
    }
    resolved = records["resolved"]
    sizes = tasks.load_npy(work, "dedupe/resolved/cluster_sizes.npy")
    values, counts = np.unique(sizes, return_counts=True)
    out.write_json("build_stats.json", {
        "format": "tokenmill.build_stats",
        "version": 1,
        "histogram_edges": {"chars": tasks.HIST_EDGES.astype(int).tolist(), "tokens": tasks.HIST_EDGES.astype(int).tolist()},
        "subsets": subsets,
        "duplicates": {"exact_removed": resolved["exact_removed"], "near_removed": resolved["near_removed"],
                       "cluster_sizes": {str(int(v)): int(c) for v, c in zip(values, counts)}},
        "stages": stages_timing,
        "workers": runner.workers,
        "wall_seconds": round(wall, 3),
    })
    manifest_io.validate(manifest, out.url("manifest.json"))
    out.write_bytes("manifest.json", manifest_io.dumps(manifest).encode())
    return manifest


def _print_summary(manifest_url: str, report: str | None, seconds: float) -> None:
    with fsspec.open(manifest_url, "rb") as f:
        data = json.loads(f.read())
    manifest_url = manifest_url.removeprefix("file://")
    base = manifest_url.rsplit("/", 1)[0]
    text_mb = data["stages"]["process"].get("text_bytes", 0) / 1e6
    process = data["stages"]["process"]
    if process["skipped"]:  # a resumed build: rates over work done earlier would mean nothing
        rate = f"{process['skipped']} of {process['tasks']} input files were already processed (resumed)"
    else:
        rate = f"{text_mb / seconds:.2f} MB/s including start-up, {text_mb / max(process['seconds'], 1e-9):.2f} MB/s in the process stage"
    print(f"\nbuilt {data['recipe']['name']} in {seconds:.1f}s: {text_mb:.1f} MB of input text, {rate}")
    for split, info in data["splits"].items():
        mix = ", ".join(f"{k} {v:.1%}" for k, v in data["mix"]["achieved"][split].items())
        print(f"  {split:<10} {len(info['shards'])} shards  {info['documents']:>8,} docs  {info['tokens']:>12,} tokens  ({mix})")
    print(f"  shards     {base}/train/, {base}/validation/")
    print(f"  manifest   {manifest_url}")
    print(f"  quarantine {base}/{data['quarantine']['path']}  ({data['quarantine']['records']} bad records)")
    if report:
        print(f"  report     {report}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill build", description="Build mixed token shards + manifest from a recipe on Ray.")
    parser.add_argument("recipe", help="recipe YAML, e.g. manifests/recipes/tinyllama.yaml")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL (s3://, gs://, ...)")
    parser.add_argument("--workers", type=int, default=None, help="tasks at a time (default: all CPUs of the local Ray / cluster)")
    parser.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: an embedded local Ray")
    parser.add_argument("--no-report", action="store_true", help="skip the statistics report at the end")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        recipe = load_recipe(args.recipe)
        manifest_url = build(recipe, args.out, args.workers, args.address)
    except (RecipeError, manifest_io.ManifestError) as e:
        print(f"tokenmill build: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (BuildError, OSError) as e:  # a task that kept failing, a full disk, a store that went away
        print(f"tokenmill build: {type(e).__name__}: {e}\n  finished tasks are kept: fix the cause and run the same command again to resume", file=sys.stderr)
        return 2
    report = None
    if not args.no_report and "://" not in manifest_url.replace("file://", ""):
        from pipeline.stats import write_report

        local = Path(manifest_url.replace("file://", ""))
        report = str(write_report(local, local.parent / "report", verify_bins=False))  # just checksummed
    _print_summary(manifest_url, report, time.perf_counter() - started)
    return 0
