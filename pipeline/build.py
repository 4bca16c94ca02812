"""`tokenmill build RECIPE --out DIR`: the corpus build, read top to bottom.

    list inputs -> [process: fetch, filter, dedupe keys, tokenize; one task per input file]
                -> [dedupe: one task per key partition] -> [resolve clusters] -> [plan the mix]
                -> [write shards: one task per shard] -> manifest.json + quarantine + build stats + report

Every output in the work dir is named by the fingerprint of what it was made from (the `*_key` functions
below; `pipeline.ledger.WorkLayout` formats the paths), so a relaunch re-uses exactly the outputs whose
inputs and settings are unchanged: an interrupted build resumes, and an added, removed or replaced input
file re-runs its own processing and every stage after it, never re-using an output made from other files.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from manifests import manifest as manifest_io
from manifests.shards import dtype_name
from pipeline import tasks
from pipeline.finalize import StageResults, finalize, print_summary
from pipeline.inputs import SPLITS, InputFile, list_inputs
from pipeline.ledger import Store, WorkLayout, fingerprint
from pipeline.progress import EventLog
from pipeline.recipe import Recipe, RecipeError, load_recipe, validate_filters
from pipeline.runner import BuildError, Runner, Task, start_ray
from pipeline.tokenizer import open_tokenizer
from stages import dedupe as dedupe_stage
from stages.tokenize import Tokenizer

# a source's settings that do not change what its files' processing produces
_NOT_PROCESS_SETTINGS = ("weight", "train", "validation")


def process_key(inp: InputFile, tokenizer: Tokenizer, recipe: Recipe) -> str:
    """The file itself, its source's read and filter settings, the tokenizer and the dedupe key settings."""
    source = {k: v for k, v in dataclasses.asdict(inp.source).items() if k not in _NOT_PROCESS_SETTINGS}
    tokenize = {"sha256": tokenizer.sha256(), "add_bos": recipe.tokenizer.add_bos, "add_eos": recipe.tokenizer.add_eos}
    return fingerprint({"input": inp.identity(), "source": source, "tokenizer": tokenize, "dedupe": dataclasses.asdict(recipe.dedupe)})


def dedupe_key(process_keys: list[str], recipe: Recipe) -> str:
    """Every process output, in the canonical order (it decides which copy of a duplicate survives)."""
    return fingerprint({"process": process_keys, "dedupe": dataclasses.asdict(recipe.dedupe)})


def mix_key(dedupe: str, recipe: Recipe) -> str:
    """The deduplicated corpus and the mix settings: policy, seed, shard size and each source's weight."""
    return fingerprint({"dedupe": dedupe, "mix": dataclasses.asdict(recipe.mix), "weights": [[s.name, s.weight] for s in recipe.sources]})


def build(recipe: Recipe, out_url: str, workers: int | None = None, address: str | None = None, console: bool = True) -> str:
    """Run (or resume) a build; returns the manifest's URL."""
    started = time.perf_counter()
    validate_filters(recipe)
    inputs = list_inputs(recipe)
    out = Store.at(out_url)
    out.makedirs()
    tokenizer = open_tokenizer(recipe, inputs, out)
    work = out.child("work")
    log = EventLog.at(out, "build.log.jsonl", console)  # on an object store: uploaded per stage and at the end
    try:
        workers = start_ray(address, workers)
        log.say(f"tokenmill build {recipe.name}: {len(inputs)} input files, {workers} workers, work dir {work.url()}")
        runner = Runner(work, workers, log)
        results = run_stages(recipe, inputs, tokenizer, runner, out)
        manifest = finalize(recipe, inputs, tokenizer, out, work, results, time.perf_counter() - started)
        log.say(f"manifest: {out.url('manifest.json')}  ({sum(s['tokens'] for s in manifest['splits'].values()):,} tokens)")
    finally:
        log.close()  # a failed build's log too: it names the tasks that finished
    return out.url("manifest.json")


def run_stages(recipe: Recipe, inputs: list[InputFile], tokenizer: Tokenizer, runner: Runner, out: Store) -> StageResults:
    layout = WorkLayout(runner.work)
    processed = _process(recipe, inputs, tokenizer, runner, layout)
    dedupe = dedupe_key([p.folder.rsplit("/", 1)[1] for p in processed], recipe)
    resolved_folder, resolved = _dedupe(recipe, processed, dedupe, runner, layout)
    mix = mix_key(dedupe, recipe)
    mixed = _mix(recipe, processed, resolved_folder, mix, runner, layout)
    shards = _shards(recipe, processed, mixed, mix, tokenizer, runner, layout, out)
    return StageResults(processed, resolved_folder, resolved, mixed, shards, runner.timings, runner.workers)


def _process(recipe: Recipe, inputs: list[InputFile], tokenizer: Tokenizer, runner: Runner, layout: WorkLayout) -> list[tasks.Processed]:
    import ray

    tokenizer_ref = ray.put(tokenizer)
    folders = [layout.process(process_key(i, tokenizer, recipe)) for i in inputs]
    records = runner.run("process", [
        Task(folder, tasks.process_file, (folder, i, runner.work, tokenizer_ref, recipe.dedupe, recipe.batch_documents), i.size)
        for i, folder in zip(inputs, folders)
    ])
    return [tasks.Processed(i.file_index, folder, record) for i, folder, record in zip(inputs, folders, records)]


def _dedupe(recipe: Recipe, processed: list[tasks.Processed], key: str, runner: Runner, layout: WorkLayout) -> tuple[str, dict]:
    partitions = recipe.dedupe.partitions if dedupe_stage.key_slots(recipe.dedupe) else 0
    partition_folders = [layout.dedupe_partition(key, p) for p in range(partitions)]
    runner.run("dedupe", [Task(folder, tasks.dedupe_partition, (folder, p, processed, runner.work)) for p, folder in enumerate(partition_folders)])
    folder = layout.resolved(key)
    (resolved,) = runner.run("resolve", [Task(folder, tasks.resolve_duplicates, (folder, partition_folders, runner.work, recipe.dedupe))])
    return folder, resolved


def _mix(recipe: Recipe, processed: list[tasks.Processed], resolved_folder: str, key: str, runner: Runner, layout: WorkLayout) -> dict:
    source_ids = {s.name: i for i, s in enumerate(recipe.sources)}
    weights = {i: s.weight for i, s in enumerate(recipe.sources)}
    folder = layout.mix(key)
    (mixed,) = runner.run("mix", [Task(folder, tasks.plan_mix, (folder, resolved_folder, processed, runner.work, source_ids, weights, recipe.mix))])
    return mixed


def _shards(recipe: Recipe, processed: list[tasks.Processed], mixed: dict, key: str, tokenizer: Tokenizer, runner: Runner, layout: WorkLayout, out: Store) -> dict[str, list[dict]]:
    names = [s.name for s in recipe.sources]
    process_folders = [p.folder for p in processed]
    numbered = [(split, n) for split in SPLITS if split in mixed["splits"] for n in range(mixed["splits"][split]["shards"])]
    records = runner.run("shard", [
        Task(folder, tasks.write_shard, (folder, layout.mix(key), split, n, process_folders, runner.work, out, dtype_name(tokenizer.dtype), names))
        for split, n in numbered for folder in [layout.shard(key, split, n)]
    ])
    shards: dict[str, list[dict]] = {}
    for (split, _), record in zip(numbered, records):
        shards.setdefault(split, []).append(record["entry"])
    return shards


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
    print_summary(manifest_url, report, time.perf_counter() - started)
    return 0
