"""`tokenmill build RECIPE --out DIR`: the corpus build, read top to bottom.

    list inputs -> process (one task per input file: fetch, filter, dedupe keys, tokenize)
                -> keys -> dedupe -> propagate/answer rounds -> removals -> sizes -> resolve
                   [-> signatures -> verify -> centers -> verdicts -> sizes -> verified]
                   (duplicates: `pipeline/tasks/dedupe.py`, clusters: `pipeline/tasks/components.py`,
                   verification: `pipeline/tasks/verify.py`)
                -> count -> samples -> plan the mix -> mix (one task per mix group, writing its shards)
                -> manifest.json + quarantine + build stats + report   (`pipeline/build/finalize.py`)

The stages, their order, their task functions and the keys that name their work folders are
`pipeline.build.registry`'s; this module plans each stage's tasks from the previous stages' done records.
Every output in the work dir is named by the fingerprint of what it was made from, so a relaunch re-uses
exactly the outputs whose inputs and settings are unchanged: an interrupted build resumes, and an added,
removed or replaced input file re-runs its own processing and every stage after it, never re-using an
output made from other files.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manifests import manifest as manifest_io
from manifests.keys import split_key
from manifests.outputs import MANIFEST, shards_folder
from manifests.shards import ShardEntry, dtype_name
from pipeline.build import registry as stage
from pipeline.build.finalize import StageResults, finalize, print_summary
from pipeline.build.inputs import SPLITS, InputFile, list_inputs
from pipeline.build.outdir import out_refusal
from pipeline.build.recipe import Recipe, RecipeError, load_recipe, validate_filters
from pipeline.build.tokenizer import open_tokenizer, recipe_tokenizer
from pipeline.tasks import components, count, dedupe, samples, verify
from pipeline.tasks import decontaminate as decontam
from pipeline.tasks.dedupe import Slices
from pipeline.tasks.mix import MixGroup
from pipeline.tasks.process import Processed
from pipeline.work.progress import EventLog
from pipeline.work.runner import BuildError, OutdatedOutputs, Runner, start_ray
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage
from stages import mix as mix_stage
from stages.decontaminate import EvalSet, EvalSetError
from stages.dedupe import DedupeConfig
from stages.mix import MixConfig
from stages.tokenize import Tokenizer


def build(
    recipe: Recipe,
    out_url: str,
    workers: int | None = None,
    address: str | None = None,
    console: bool = True,
    work_url: str | None = None,
    reuse_only: frozenset[str] = frozenset(),
) -> str:
    """Run (or resume) a build; returns the manifest's URL. `work_url` (default OUT/work) may be shared by
    several outputs: each re-uses every task output whose inputs and settings match, whoever made it.
    `reuse_only`: stages that must not run a task (`MissingOutputs` if one would)."""
    started = time.perf_counter()
    validate_filters(recipe)
    # eval sets are read and checked before any work: a missing file, a field no record has, an empty set
    eval_sets = decontam.eval_sets(recipe.decontaminate) if recipe.decontaminate else []
    given = recipe_tokenizer(recipe)  # local things first: a wrong tokenizer path is refused before any listing
    inputs = list_inputs(recipe)
    out = Store.at(out_url)
    out.makedirs()
    tokenizer = given or open_tokenizer(recipe, inputs, out)
    work = Store.at(work_url) if work_url else out.child("work")
    log = EventLog.at(out, console=console)  # on an object store: uploaded per stage and at the end
    try:
        workers = start_ray(address, workers)
        log.say(f"tokenmill build {recipe.name}: {len(inputs)} input files, {workers} workers, work dir {work.url()}")
        runner = Runner(work, workers, log, reuse_only=reuse_only)
        results = run_stages(recipe, inputs, tokenizer, runner, out, eval_sets)
        manifest = finalize(recipe, inputs, tokenizer, out, work, results, time.perf_counter() - started)
        log.say(f"manifest: {manifest.path}  ({sum(s.tokens for s in manifest.splits.values()):,} tokens)")
    finally:
        log.close()  # a failed build's log too: it names the tasks that finished
    return out.url(MANIFEST)


@dataclass(frozen=True, slots=True)
class ProcessedCorpus:
    """The processed corpus, every stage before the mix: what any mix of it (a build, a sweep's proxies) plans from."""

    processed: list[Processed]
    decontaminated: list[dict]
    index: tuple[str, dict] | None  # the decontamination index task's folder and done record
    group_folders: list[str]
    group_records: list[dict]
    resolved_folder: str
    resolved: dict
    counts: list[dict]
    samples_folder: str
    keys: dict[str, str]


def run_stages(
    recipe: Recipe,
    inputs: list[InputFile],
    tokenizer: Tokenizer,
    runner: Runner,
    out: Store,
    eval_sets: list[EvalSet] = (),
) -> StageResults:
    """Every stage of `pipeline.build.registry`, in its order, each planned from the ones before."""
    c = processed_corpus(recipe, inputs, tokenizer, runner, out, eval_sets)
    shards, factors, totals = _mix(
        recipe, c.processed, c.counts, c.resolved_folder, c.keys["mix"], tokenizer, runner, out
    )
    funnels = [f for r in c.group_records for f in r["source_funnels"]]
    filter_samples = samples.first_filter_samples([r["filter_samples"] for r in c.group_records])
    return StageResults(
        funnels=funnels,
        filter_samples=filter_samples,
        kept=count.merge_subset_stats(c.counts),
        resolved_folder=c.resolved_folder,
        resolved=c.resolved,
        key_groups=c.group_folders,
        key_group_records=c.group_records,
        samples_folder=c.samples_folder,
        factors=factors,
        shards=shards,
        shards_folder=shards_folder(c.keys["mix"]),
        keys=c.keys,
        used=runner.used,
        timings=runner.timings,
        workers=runner.workers,
        decontamination=c.index,
        decontaminated=c.decontaminated,
        domain_tokens=totals,
    )


def processed_corpus(
    recipe: Recipe,
    inputs: list[InputFile],
    tokenizer: Tokenizer,
    runner: Runner,
    out: Store,
    eval_sets: list[EvalSet] = (),
) -> ProcessedCorpus:
    """The stages before the mix, in the registry's order (decontaminate, process ... count, samples)."""
    index_folder, index_record, index_ref = _decontaminate(recipe, eval_sets, tokenizer, runner, out)
    processed, decontaminated = _process(recipe, inputs, tokenizer, runner, index_folder, index_ref)
    dedupe_key = stage.dedupe_key([p.folder.rsplit("/", 1)[1] for p in processed], recipe)
    groups = dedupe.key_groups(processed, len(dedupe_stage.key_slots(recipe.dedupe)))
    group_folders, group_records = _combine_keys(recipe, groups, runner)
    resolved_folder, resolved, removals, cuts = _dedupe(
        recipe, processed, dedupe_key, group_folders, group_records, runner
    )
    keys = {"dedupe": dedupe_key}
    if recipe.dedupe.minhash.verify:
        keys["verify"] = stage.verify_key(dedupe_key, recipe)
        folders_ref = runner.share([p.folder for p in processed])  # a cluster's documents may be in any file
        resolved_folder, resolved = verified_of(
            recipe.dedupe, keys["verify"], cuts, removals, folders_ref, len(processed), runner
        )
    counts = _count(groups, group_folders, resolved_folder, runner)
    samples_folder = _duplicate_samples(recipe, inputs, processed, counts, runner)
    keys["mix"] = stage.mix_key(keys.get("verify", dedupe_key), recipe)
    index = (index_folder, index_record) if index_folder else None
    return ProcessedCorpus(
        processed,
        decontaminated,
        index,
        group_folders,
        group_records,
        resolved_folder,
        resolved,
        counts,
        samples_folder,
        keys,
    )


def _decontaminate(recipe: Recipe, eval_sets: list[EvalSet], tokenizer: Tokenizer, runner: Runner, out: Store):
    """The eval sets' index (one task, re-used while their bytes and rules are unchanged), put once into Ray's
    object store for every process task: (its folder, its done record, the object) or ("", None, None)."""
    if recipe.decontaminate is None:
        return "", None, None
    made_from = decontam.index_made_from(recipe.decontaminate, eval_sets, tokenizer)
    _say_what_changed(out, made_from, runner, recipe)
    folder = stage.DECONTAMINATE.folder(stage.decontaminate_key(made_from))
    task = stage.DECONTAMINATE.task(folder, folder, recipe.decontaminate, tokenizer, runner.work)
    (record,) = runner.run(stage.DECONTAMINATE, [task])
    index = decontam.load_index(runner.work, folder, record, recipe.decontaminate)
    items = sum(s["items"] for s in record["sets"])
    runner.log.say(
        f"decontaminate: {record['ngrams']:,} n-grams of {items:,} items in {len(record['sets'])} eval sets, "
        f"index {index.nbytes / 2**20:.1f} MiB (one shared copy for the process tasks)"
    )
    return folder, record, runner.share(index)


def _say_what_changed(out: Store, made_from: dict, runner: Runner, recipe: Recipe) -> None:
    """When OUT holds an earlier build with other eval sets (or none): which sets came, went or changed, and that
    every input file is processed again (its documents matched against the new index) and every stage after."""
    try:
        earlier = out.read_json(MANIFEST)
    except (OSError, ValueError):
        return
    earlier_sets = (earlier.get("decontamination") or {}).get("sets", [])
    before = {s["name"]: (s["sha256"], s["rule"], s["action"]) for s in earlier_sets}
    now = {s["name"]: (s["sha256"], s["rule"], s["action"]) for s in made_from["sets"]}
    if before == now:
        return
    changes = [
        f"added {', '.join(sorted(set(now) - set(before)))}" if set(now) - set(before) else "",
        f"removed {', '.join(sorted(set(before) - set(now)))}" if set(before) - set(now) else "",
        f"changed {', '.join(sorted(n for n in set(now) & set(before) if now[n] != before[n]))}"
        if any(now[n] != before[n] for n in set(now) & set(before))
        else "",
    ]
    runner.log.event(
        "decontaminate_changed", added=sorted(set(now) - set(before)), removed=sorted(set(before) - set(now))
    )
    after = ", ".join(s.name for s in stage.stages_of(recipe) if s is not stage.DECONTAMINATE)
    runner.log.say(
        f"decontaminate: eval sets {'; '.join(c for c in changes if c)} since the build in {out.url()}: the "
        f"index is built for them, every input file is processed again (its text matched against them) and "
        f"every stage after re-runs: {after}"
    )


def _process(
    recipe: Recipe,
    inputs: list[InputFile],
    tokenizer: Tokenizer,
    runner: Runner,
    index_folder: str = "",
    index_ref=None,
) -> tuple[list[Processed], list[dict]]:
    """Every input file's process output, as the later stages plan from it (its funnels are summed by the key
    groups), and when the recipe decontaminates what the eval sets matched in each file ({"source", "path",
    "decontamination"}) for the report."""
    tokenizer_ref = runner.share(tokenizer)
    index_key = index_folder.rsplit("/", 1)[1] if index_folder else ""
    folders = [stage.PROCESS.folder(k) for k in stage.process_keys(inputs, tokenizer, recipe, index_key)]
    records = runner.run(
        stage.PROCESS,
        [
            stage.PROCESS.task(
                folder,
                folder,
                i,
                runner.work,
                tokenizer_ref,
                recipe.dedupe,
                recipe.batch_documents,
                index_ref,
                input_bytes=i.size,
                input=i.url,
            )
            for i, folder in zip(inputs, folders)
        ],
        keep=_planning_facts,
    )
    processed = [
        Processed(i.file_index, folder, r["source"], r["documents"], r["subsets"])
        for i, folder, r in zip(inputs, folders, records)
    ]
    return processed, [
        {k: r[k] for k in ("source", "path", "decontamination")} for r in records if "decontamination" in r
    ]


def _planning_facts(record: dict) -> dict:
    """What the driver keeps of a process task's done record: not its funnels (the key groups sum them)."""
    return {k: record[k] for k in ("source", "path", "documents", "subsets", "decontamination") if k in record}


def _combine_keys(recipe: Recipe, groups: list[list[Processed]], runner: Runner) -> tuple[list[str], list[dict]]:
    partitions = recipe.dedupe.partitions
    folders = [stage.KEYS.folder(stage.key_group_key(g, partitions)) for g in groups]
    records = runner.run(
        stage.KEYS, [stage.KEYS.task(folder, folder, g, partitions, runner.work) for folder, g in zip(folders, groups)]
    )
    return folders, records


def _dedupe(
    recipe: Recipe,
    processed: list[Processed],
    key: str,
    group_folders: list[str],
    group_records: list[dict],
    runner: Runner,
) -> tuple[str, dict, RangeRemovals, list[int]]:
    """The dedupe partitions, then their edges' connected components (`pipeline/tasks/components.py`); returns
    the resolve folder, its record, the node ranges' removals and the node ranges."""
    partitions = recipe.dedupe.partitions if dedupe_stage.key_slots(recipe.dedupe) else 0
    cuts = components.component_ranges(processed)
    folders = [stage.DEDUPE.folder(key, stage.partition_part(p)) for p in range(partitions)]
    records = runner.run(
        stage.DEDUPE,
        [
            stage.DEDUPE.task(
                folder,
                folder,
                p,
                [
                    dedupe.KeySlice(g, r["key_offsets"][p], r["key_offsets"][p + 1])
                    for g, r in zip(group_folders, group_records)
                ],
                runner.work,
                cuts,
            )
            for p, folder in enumerate(folders)
        ],
        keep=offsets_as_arrays,
        needs=("range_offsets",),  # a record from before the clustering stages has none
    )
    edges = SlicedFile.of(folders, records, "edges.bin", "range_offsets")
    return (*components_of(recipe.dedupe, key, cuts, edges, len(processed), runner), cuts)


def offsets_as_arrays(record: dict) -> dict:
    """A done record with its `*_offsets` lists as int64 arrays: the driver keeps tasks x ranges of them (~8 B
    each, not a Python int's ~36)."""
    return {k: np.asarray(v, np.int64) if k.endswith("_offsets") else v for k, v in record.items()}


@dataclass(frozen=True, slots=True)
class SlicedFile:
    """File `name` of every task of a stage, cut by each done record's `offsets` (tasks x (slices + 1)): slice i
    of every task's file is what a later task i reads."""

    paths: list[str]
    offsets: np.ndarray

    @classmethod
    def of(cls, folders: list[str], records: list[dict], name: str, offsets: str) -> SlicedFile:
        return cls([f"{folder}/{name}" for folder in folders], np.array([r[offsets] for r in records], np.int64))

    def __getitem__(self, i: int) -> Slices:
        if not self.paths:
            return Slices([], np.zeros(0, np.int64), np.zeros(0, np.int64))
        return Slices(self.paths, self.offsets[:, i], self.offsets[:, i + 1])


@dataclass(frozen=True, slots=True)
class RangeRemovals:
    """The node ranges' removals tasks: their folders and done records, in range order."""

    folders: list[str]
    records: list[dict]
    counts: SlicedFile = field(init=False)

    def __post_init__(self) -> None:
        counts = SlicedFile.of(self.folders, self.records, components.COUNTS, "count_offsets")
        object.__setattr__(self, "counts", counts)

    def asking(self, j: int) -> Slices:
        """Each range's members per survivor of range j (rows survivor, count): which of j's survivors it asks."""
        return self.counts[j]


def components_of(
    dedupe_config: DedupeConfig, key: str, cuts: list[int], edges: SlicedFile, n_files: int, runner: Runner
) -> tuple[str, dict, RangeRemovals]:
    """Rounds of propagate + answer (one task per node range each) until a round changes no label, then the
    removals per range, the cluster sizes per range and the resolve format written from them. Returns the
    resolve folder, its record and the ranges' removals."""
    ranges, work = range(len(cuts) - 1), runner.work
    ckey = stage.components_key(key, cuts)
    exact_slot = 0 if dedupe_config.exact else None
    rnd, first, state, answers = 0, None, [None for _ in ranges], [[] for _ in ranges]
    while True:
        asking = [stage.PROPAGATE.folder(ckey, stage.range_part(k, rnd)) for k in ranges]
        first = first or asking  # round 0's folders keep each range's edges and exact copies
        asked = runner.run(
            stage.PROPAGATE,
            [
                stage.PROPAGATE.task(
                    f, f, rnd, cuts, edges[k] if rnd == 0 else first[k], state[k], answers[k], exact_slot, work
                )
                for k, f in zip(ranges, asking)
            ],
            keep=offsets_as_arrays,
        )
        state = [stage.ANSWER.folder(ckey, stage.range_part(k, rnd)) for k in ranges]
        asks = SlicedFile.of(asking, asked, components.ASKS, "ask_offsets")
        answered = runner.run(
            stage.ANSWER,
            [stage.ANSWER.task(f, f, rnd, asking[j], asks[j], work) for j, f in zip(ranges, state)],
            keep=offsets_as_arrays,
        )
        if not sum(r["changed"] for r in asked + answered):
            break
        answers = SlicedFile.of(state, answered, components.ANSWERS, "answer_offsets")
        rnd += 1
    runner.log.event("components", rounds=rnd + 1, ranges=len(ranges))
    folders = [stage.REMOVALS.folder(ckey, stage.range_part(k)) for k in ranges]
    removed = runner.run(
        stage.REMOVALS,
        [stage.REMOVALS.task(f, f, state[k], first[k], cuts, work) for k, f in zip(ranges, folders)],
        keep=offsets_as_arrays,
    )
    removals = RangeRemovals(folders, removed)
    folder, record = _write_resolved(stage.RESOLVE, key, ckey, removals, n_files, runner)
    return folder, record, removals


def _write_resolved(
    writer: stage.Stage,
    key: str,
    ckey: str,
    removals: RangeRemovals,
    n_files: int,
    runner: Runner,
    extra: dict | None = None,
) -> tuple[str, dict]:
    """The cluster sizes per survivor range, then one task streaming the ranges' removals into the resolve format."""
    ranges = range(len(removals.folders))
    sizes = [stage.SIZES.folder(ckey, stage.range_part(j)) for j in ranges]
    runner.run(stage.SIZES, [stage.SIZES.task(f, f, removals.asking(j), runner.work) for j, f in zip(ranges, sizes)])
    folder = writer.folder(key)
    (record,) = runner.run(writer, [writer.task(folder, folder, removals.folders, sizes, n_files, runner.work, extra)])
    return folder, record


def verified_of(
    dedupe_config: DedupeConfig,
    key: str,
    cuts: list[int],
    removals: RangeRemovals,
    process_folders,
    n_files: int,
    runner: Runner,
) -> tuple[str, dict]:
    """Each range's removals checked against their clusters' kept documents by estimated Jaccard
    (`pipeline/tasks/verify.py`: signatures, verify, centers and verdicts, one task per node range each); what
    stays removed per range, the cluster sizes per range and one writer's resolve format: the folder the count
    and mix tasks read instead of the resolve task's. `process_folders`: every file's process folder (or a Ray
    ref)."""
    work, ranges = runner.work, range(len(cuts) - 1)
    check = verify.Verification(dedupe_config.minhash.permutations, dedupe_config.minhash.threshold, cuts)
    ckey = stage.components_key(key, cuts)

    def folders(s: stage.Stage) -> list[str]:
        return [s.folder(ckey, stage.range_part(k)) for k in ranges]

    def run(s: stage.Stage, inputs) -> list[dict]:  # inputs(k): node range k's task's inputs
        tasks = [s.task(f, f, *inputs(k), check, work) for k, f in zip(ranges, folders(s))]
        return runner.run(s, tasks, keep=offsets_as_arrays)

    sent, checked, kept, judged = (folders(s) for s in (stage.SIGNATURES, stage.VERIFY, stage.CENTERS, stage.VERDICTS))
    sent_records = run(stage.SIGNATURES, lambda j: (removals.asking(j), process_folders))
    sent_parts = SlicedFile.of(sent, sent_records, verify.SENT, "sent_offsets")
    checked_records = run(stage.VERIFY, lambda r: (removals.folders[r], sent_parts[r], process_folders))
    candidates = SlicedFile.of(checked, checked_records, verify.CANDIDATES, "candidate_offsets")
    kept_records = run(stage.CENTERS, lambda j: (candidates[j], removals.asking(j)))
    kept_parts = SlicedFile.of(kept, kept_records, verify.CENTERS, "center_offsets")
    removed = run(stage.VERDICTS, lambda r: (removals.folders[r], checked[r], kept_parts[r], process_folders))
    histogram = {"edges": np.linspace(0, 1, verify.SIMILARITY_BINS + 1).round(2).tolist()}
    histogram.update(
        {
            name: [int(sum(r["similarity"][name][b] for r in removed)) for b in range(verify.SIMILARITY_BINS)]
            for name in ("removed", "kept")
        }
    )
    extra = {"kept_by_verify": sum(histogram["kept"]), "similarity": histogram}
    return _write_resolved(stage.VERIFIED, key, ckey, RangeRemovals(judged, removed), n_files, runner, extra)


def _count(groups: list[list[Processed]], group_folders: list[str], resolved_folder: str, runner: Runner) -> list[dict]:
    # a count task also lists its group's first duplicates per source, subset and step, PER_STEP of each
    folders = [stage.COUNT.folder(stage.count_key(g, resolved_folder)) for g in group_folders]
    return runner.run(
        stage.COUNT,
        [stage.COUNT.task(folder, folder, g, resolved_folder, runner.work) for folder, g in zip(folders, groups)],
    )


def _duplicate_samples(
    recipe: Recipe, inputs: list[InputFile], processed: list[Processed], counts: list[dict], runner: Runner
) -> str:
    """A few removed duplicates per source, subset and step, chosen from the count tasks' candidates, their text
    read back from at most SAMPLE_FILES input files by one task; returns its folder."""
    chosen = samples.choose([samples.DuplicateCandidate(**c) for r in counts for c in r["duplicate_candidates"]])
    named = sorted(
        {split_key(key)[0] for c in chosen for key in (c.doc, c.kept)}
    )  # read or, for an exact copy's kept twin, named
    folder = stage.SAMPLES.folder(stage.samples_key(chosen, {f: processed[f].folder for f in named}))
    (record,) = runner.run(
        stage.SAMPLES,
        [
            stage.SAMPLES.task(
                folder,
                folder,
                chosen,
                {f: inputs[f] for f in named},
                recipe.dedupe.minhash,
                recipe.batch_documents,
                runner.work,
            )
        ],
    )
    for url, error in record["unreadable"].items():
        runner.log.event("samples_skipped", file=url, error=error)
        runner.log.say(
            f"warning: the duplicates sampled from {url} are left out of dropped_samples.jsonl: it could not be read "
            f"({error})"
        )
    return folder


def plan_mix(recipe: Recipe, processed: list[Processed], counts: list[dict], shards_folder: str) -> list[MixGroup]:
    """The mix groups of every split, planned from the count tasks' per-file kept tokens (no document tables):
    one stream per domain (per source for a recipe without domains)."""
    kept = {int(f): c for record in counts for f, c in record["subset_tokens"].items()}
    domains = recipe.domain_list()
    members, subset_ids = domain_members(domains, processed, kept)
    weights = {d.id: d.weight for d in domains}
    folders = {p.file_index: p.folder for p in processed}
    groups = []
    for split_no, split in enumerate(SPLITS):
        streams = {}
        for d in domains:
            files = sorted(members[d.id])
            tokens = [sum(kept[f][split_no][j] for j in members[d.id][f]) for f in files]
            streams[d.id] = (np.asarray(files, np.int64), np.asarray(tokens, np.int64))
        groups += _plan_split(split, streams, weights, recipe.mix, folders, shards_folder, subset_ids)
    return groups


def domain_members(
    domains: list[mix_stage.Domain], processed: list[Processed], kept: dict[int, list[list[int]]]
) -> tuple[dict[int, dict[int, list[int]]], dict[int, dict[int, list[int]]]]:
    """Per domain id: each file of its source and the subset column values of that file it takes; and the same
    for the domains that must filter by subset (not every document of their files is theirs). A subset whose
    kept documents no domain takes is refused (the build would silently drop them)."""
    members: dict[int, dict[int, list[int]]] = {d.id: {} for d in domains}
    for p in processed:
        of = mix_stage.subset_domains(domains, p.source, p.subsets)
        for j, d in enumerate(of):
            if d is None and any(split[j] for split in kept[p.file_index]):
                raise RecipeError(
                    f"recipe field `domains`: subset {p.subsets[j]!r} of source {p.source!r} has kept documents "
                    "but is in no domain; "
                    f"name it in a domain, or give {p.source} a domain without `subsets` (it takes the rest)"
                )
        for d in domains:
            if d.source == p.source:
                members[d.id][p.file_index] = [j for j, owner in enumerate(of) if owner == d.id]
    whole = {d.id for d in domains if d.subsets is None and sum(e.source == d.source for e in domains) == 1}
    return members, {d: files for d, files in members.items() if d not in whole}


def domain_tokens(recipe: Recipe, processed: list[Processed], counts: list[dict]) -> dict[str, dict[str, int]]:
    """Per split, each domain's kept tokens (each source's, for a recipe without domains)."""
    kept = {int(f): c for record in counts for f, c in record["subset_tokens"].items()}
    domains = recipe.domain_list()
    members, _ = domain_members(domains, processed, kept)
    return {
        split: {d.name: sum(kept[f][n][j] for f, subsets in members[d.id].items() for j in subsets) for d in domains}
        for n, split in enumerate(SPLITS)
    }


def _mix(
    recipe: Recipe,
    processed: list[Processed],
    counts: list[dict],
    resolved_folder: str,
    key: str,
    tokenizer: Tokenizer,
    runner: Runner,
    out: Store,
) -> tuple[dict[str, list[dict]], dict[str, dict[int, float]], dict[str, dict[int, int]]]:
    """Run the mix groups; returns each split's shard entries, each split's repeat factor per domain (source, for
    a recipe without domains) and each split's kept tokens per domain."""
    groups = plan_mix(recipe, processed, counts, shards_folder(key))
    factors = {g.split: g.factors for g in groups}
    totals = {g.split: {} for g in groups}
    for g in groups:
        for piece in g.slices:
            totals[g.split][piece.source_id] = totals[g.split].get(piece.source_id, 0) + piece.tokens
    totals = {split: {d: round(t) for d, t in per.items()} for split, per in totals.items()}
    written_to = stage.mix_written_key(key, out.url())
    source_names = [s.name for s in recipe.sources]
    domains = [(d.name, d.source) for d in recipe.domain_list()] if recipe.domains else None
    records = runner.run(
        stage.MIX,
        [
            stage.MIX.task(
                folder,
                folder,
                g,
                resolved_folder,
                runner.work,
                out,
                dtype_name(tokenizer.dtype),
                source_names,
                recipe.mix.seed,
                *([domains] if domains else []),
            )
            for g in groups
            for folder in [stage.MIX.folder(written_to, stage.mix_group_part(g.split, g.number))]
        ],
    )
    shards: dict[str, list[dict]] = {}
    for g, record in zip(groups, records):
        shards.setdefault(g.split, []).extend(ShardEntry(**e) for e in record["entries"])
    return shards, factors, totals


def _plan_split(
    split: str,
    streams: dict[int, tuple[np.ndarray, np.ndarray]],
    weights: dict[int, float],
    mix: MixConfig,
    folders: dict[int, str],
    shards_folder: str,
    subset_ids: dict[int, dict[int, list[int]]],
) -> list[MixGroup]:
    """The split's mix groups: each domain's stream cut into the same number of token ranges, the policy's
    repeat factors (with a token budget: the budget's for train, everything for validation), and each group's
    shards numbered after the previous groups'."""
    totals = {sid: int(tokens.sum()) for sid, (_, tokens) in streams.items()}
    if not any(totals.values()):
        return []
    if mix.budget_tokens:
        factors = (
            mix_stage.budget_factors(totals, weights, mix.budget_tokens)
            if split == "train"
            else {d: 1.0 for d in totals}
        )
    else:
        factors = mix_stage.repeat_factors(totals, weights, mix.policy)
    planned = sum(factors[sid] * t for sid, t in totals.items())
    groups, first_shard = [], 0
    for number, slices in enumerate(
        mix_stage.slice_streams(streams, mix_stage.group_count(planned, mix.shard_tokens, mix.shards_per_group))
    ):
        shards = mix_stage.shard_count(sum(factors[s.source_id] * s.tokens for s in slices), mix.shard_tokens)
        files = {f: folders[f] for s in slices for f, _ in s.files}
        subsets = {
            s.source_id: {f: subset_ids[s.source_id][f] for f, _ in s.files}
            for s in slices
            if s.source_id in subset_ids
        }
        groups.append(
            MixGroup(
                split=split,
                number=number,
                slices=slices,
                factors=factors,
                first_shard=first_shard,
                shards=shards,
                folders=files,
                shards_folder=shards_folder,
                subset_ids=subsets,
            )
        )
        first_shard += shards
    return groups


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill build", description="Build mixed token shards + manifest from a recipe on Ray."
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. manifests/recipes/tinyllama.yaml")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL (s3://, gs://, ...)")
    parser.add_argument(
        "--work",
        default=None,
        help="work store for task outputs, shareable by several outputs (e.g. one per mix); default OUT/work",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="tasks at a time (default: all CPUs of the local Ray / cluster)"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (e.g. auto); default: an embedded local Ray"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the statistics report at the end")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (inputs, tasks per stage, what is re-used and why, "
        "the cost at the measured rate, where it writes) and stop: nothing is written, no task runs",
    )
    args = parser.parse_args(argv)
    refused = None
    if args.workers is not None and args.workers < 1:
        refused = f"--workers {args.workers}: give at least 1 (or leave it out to use every CPU of the cluster)"
    elif "://" not in args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        refused = f"--out {args.out}: is a file; give a folder (new, or holding an earlier build)"
    else:
        refused = out_refusal(args.out)
    if refused:
        print(f"tokenmill build: {refused}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        recipe = load_recipe(args.recipe)
        if args.dry_run:
            from pipeline.build.plan import describe, plan_build

            print("\n".join(describe(plan_build(recipe, args.out, args.work), args.workers)))
            return 0
        manifest_url = build(recipe, args.out, args.workers, args.address, work_url=args.work)
    except (RecipeError, EvalSetError, manifest_io.ManifestError, OutdatedOutputs) as e:
        print(f"tokenmill build: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (BuildError, OSError) as e:  # a task that kept failing, a full disk, a store that went away
        print(
            f"tokenmill build: {type(e).__name__}: {e}\n  finished tasks are kept: fix the cause and run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 2
    report = None
    if not args.no_report and "://" not in manifest_url.replace("file://", ""):
        from pipeline.report.stats import write_report

        local = Path(manifest_url.replace("file://", ""))
        report = str(write_report(local, local.parent / "report", verify_bins=False))  # just checksummed
    print_summary(manifest_url, report, time.perf_counter() - started)
    return 0
