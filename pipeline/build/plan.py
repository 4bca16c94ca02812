"""`tokenmill build --dry-run`: the plan of a build, from the listing and the work store's done records alone.

For every stage of `pipeline.build.registry` in its order: its tasks, how many of their outputs the work store
already holds (re-used) and why the others run; the inputs per source; the process stage's cost at the rate its
finished tasks measured; and where the build writes. Nothing is written and Ray is not started: a stage's
task folders are named exactly as the driver names them (the registry's key functions), from the done records
of the stages before it, so a stage whose inputs are not all made yet is planned as "runs" with its task count
where the recipe alone gives it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from manifests.keys import split_key
from manifests.outputs import MANIFEST, TOKENIZER_MODEL, shards_folder
from pipeline.build import registry as stage
from pipeline.build.inputs import InputFile, list_inputs
from pipeline.build.recipe import Recipe, validate_filters
from pipeline.build.tokenizer import recipe_tokenizer
from pipeline.tasks import components, dedupe, samples
from pipeline.tasks.process import Processed
from pipeline.work.progress import human_bytes
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage
from stages.tokenize import Tokenizer


@dataclass(slots=True)
class StagePlan:
    name: str
    tasks: int | None  # None: known once the stages before it have run
    reused: int
    why: str


@dataclass(slots=True)
class Plan:
    recipe: str
    inputs: list[InputFile]
    out: str
    work: str
    stages: list[StagePlan] = field(default_factory=list)
    shards: str | None = None  # the output's shard folder, when the mix key is known
    process_bytes_left: int = 0  # input bytes of the files whose process outputs are missing
    rate: tuple[float, str] | None = None  # (input bytes per core-second, where it was measured)
    notes: list[str] = field(default_factory=list)


class _Planner:
    """Walks the stages as the driver does, reading done records instead of running tasks."""

    def __init__(self, recipe: Recipe, inputs: list[InputFile], tokenizer: Tokenizer | None, out: Store, work: Store):
        self.recipe, self.inputs, self.tokenizer, self.out, self.work = recipe, inputs, tokenizer, out, work
        self.earlier = _read_json(out, MANIFEST)
        self.plan = Plan(recipe.name, inputs, out.url(), work.url())
        self.changed: str | None = None  # the first stage with outputs to make: every later stage is made from it

    def _done(self, folders: list[str]) -> list[dict | None]:
        """The done records of these task folders (None where unfinished), read as the driver reads them."""
        return self.work.done_records(folders, lambda _, record: record)

    def stage(
        self,
        which: stage.Stage,
        folders: list[str] | None,
        tasks: int | None = None,
        why_new: str = "",
        records: list[dict | None] | None = None,
    ) -> list[dict | None] | None:
        """Adds the stage's row; returns its done records (`records`, where the caller has read them already)
        when every one of them exists (None otherwise)."""
        if folders is None:
            why = f"made from the {self.changed} outputs, which are made first" if self.changed else why_new
            self.plan.stages.append(StagePlan(which.name, tasks, 0, why or "runs"))
            self.changed = self.changed or which.name
            return None
        if records is None:
            records = self._done(folders)
        reused = sum(r is not None for r in records)
        if reused == len(records):
            why = "re-used: made earlier from the same inputs and settings" if records else "nothing to do"
        elif reused:
            why = f"{len(records) - reused} unfinished (an interrupted build): they run, the finished ones are re-used"
        else:
            why = why_new or "no output made from these inputs and settings yet"
        self.plan.stages.append(StagePlan(which.name, len(records), reused, why))
        if reused < len(records):
            self.changed = self.changed or which.name
            return None
        return records

    def run(self) -> Plan:
        recipe = self.recipe
        slots = len(dedupe_stage.key_slots(recipe.dedupe))
        partitions = recipe.dedupe.partitions if slots else 0
        processed = self._process()
        groups = dedupe.key_groups(processed, slots) if processed else None
        key = stage.dedupe_key([p.folder.rsplit("/", 1)[1] for p in processed], recipe) if processed else None
        group_folders = (
            [stage.KEYS.folder(stage.key_group_key(g, recipe.dedupe.partitions)) for g in groups]
            if groups is not None
            else None
        )
        group_records = self.stage(stage.KEYS, group_folders)
        parts = (
            [stage.DEDUPE.folder(key, stage.partition_part(p)) for p in range(partitions)]
            if group_records is not None
            else None
        )
        self.stage(stage.DEDUPE, parts, partitions)
        cuts = components.component_ranges(processed) if processed else None
        ranges = range(len(cuts) - 1) if cuts else range(0)
        ckey = stage.components_key(key, cuts) if cuts else None
        self._rounds(ckey, ranges)
        for per_range in (stage.REMOVALS, stage.SIZES):
            folders = [per_range.folder(ckey, stage.range_part(k)) for k in ranges] if not self.changed else None
            self.stage(per_range, folders, len(ranges) if cuts else None)
        resolved = self.stage(
            stage.RESOLVE, [stage.RESOLVE.folder(key)] if parts is not None and not self.changed else None, 1
        )
        resolved_folder = stage.RESOLVE.folder(key) if resolved is not None else None
        deduplicated = key
        if recipe.dedupe.minhash.verify:
            deduplicated = stage.verify_key(key, recipe) if key else None
            ready = resolved_folder is not None
            vkey = stage.components_key(deduplicated, cuts) if ready else None
            for per_range in (stage.SIGNATURES, stage.VERIFY, stage.CENTERS, stage.VERDICTS):
                folders = [per_range.folder(vkey, stage.range_part(k)) for k in ranges]
                self.stage(per_range, folders if ready and not self.changed else None, len(ranges) if cuts else None)
            verified = self.stage(
                stage.VERIFIED, [stage.VERIFIED.folder(deduplicated)] if ready and not self.changed else None, 1
            )
            resolved_folder = stage.VERIFIED.folder(deduplicated) if verified is not None else None
        counts = self.stage(
            stage.COUNT,
            [stage.COUNT.folder(stage.count_key(g, resolved_folder)) for g in group_folders]
            if resolved_folder is not None
            else None,
            len(groups) if groups is not None else None,
        )
        self._samples(processed, counts)
        self._mix(processed, counts, deduplicated)
        return self.plan

    def _rounds(self, ckey: str | None, ranges: range) -> None:
        """The propagate and answer rounds: re-used when every round up to the one that changed no label is done."""
        if ckey is None or self.changed:
            self.stage(stage.PROPAGATE, None)
            self.stage(stage.ANSWER, None)
            return
        folders: dict[stage.Stage, list[str]] = {stage.PROPAGATE: [], stage.ANSWER: []}
        rnd = 0
        while True:
            records = []
            for which in folders:
                folders[which] += [which.folder(ckey, stage.range_part(k, rnd)) for k in ranges]
                records += [self.work.done(which.folder(ckey, stage.range_part(k, rnd))) for k in ranges]
            if any(r is None for r in records) or not sum(r["changed"] for r in records):
                break  # an unfinished round (it and the rest run), or the last one
            rnd += 1
        for which, names in folders.items():
            self.stage(which, names)

    def _process(self) -> list[Processed] | None:
        if self.tokenizer is None:  # trained on the inputs first: its sha256 names every process output
            if self.recipe.decontaminate is not None:
                self.plan.stages.append(StagePlan(stage.DECONTAMINATE.name, 1, 0, "after the tokenizer is trained"))
            self.stage(
                stage.PROCESS,
                None,
                len(self.inputs),
                "the tokenizer is trained on the inputs first, then every stage runs",
            )
            self.plan.process_bytes_left = sum(i.size for i in self.inputs)
            return None
        index_key = self._decontaminate()
        folders = [
            stage.PROCESS.folder(k) for k in stage.process_keys(self.inputs, self.tokenizer, self.recipe, index_key)
        ]
        records = self._done(folders)
        self._measure(records)
        self.plan.process_bytes_left = sum(i.size for i, r in zip(self.inputs, records) if r is None)
        done = self.stage(stage.PROCESS, folders, why_new=self._why_process(records), records=records)
        if done is None:
            return None
        return [
            Processed(i.file_index, f, r["source"], r["documents"], r["subsets"])
            for i, f, r in zip(self.inputs, folders, done)
        ]

    def _decontaminate(self) -> str:
        """The eval sets' index row (one task), and its key, which names every process output; "" without eval
        sets. Its own state never holds the later stages back: the process outputs are keyed by what it is made
        from, whether or not it exists now."""
        if self.recipe.decontaminate is None:
            return ""
        from pipeline.tasks import decontaminate

        made_from = decontaminate.index_made_from(
            self.recipe.decontaminate, decontaminate.eval_sets(self.recipe.decontaminate), self.tokenizer
        )
        key = stage.decontaminate_key(made_from)
        done = self.work.done(stage.DECONTAMINATE.folder(key)) is not None
        why = (
            "re-used: made earlier from the same eval sets and rule"
            if done
            else "no index of these eval sets and rule yet"
        )
        self.plan.stages.append(StagePlan(stage.DECONTAMINATE.name, 1, int(done), why))
        return key

    def _samples(self, processed: list[Processed] | None, counts: list[dict] | None) -> None:
        if counts is None:
            self.stage(stage.SAMPLES, None, 1)
            return
        chosen = samples.choose([samples.DuplicateCandidate(**c) for r in counts for c in r["duplicate_candidates"]])
        named = sorted({split_key(k)[0] for c in chosen for k in (c.doc, c.kept)})
        self.stage(
            stage.SAMPLES, [stage.SAMPLES.folder(stage.samples_key(chosen, {f: processed[f].folder for f in named}))]
        )

    def _mix(self, processed: list[Processed] | None, counts: list[dict] | None, deduplicated: str | None) -> None:
        from pipeline.build.driver import plan_mix

        mix = stage.mix_key(deduplicated, self.recipe) if deduplicated else None
        self.plan.shards = self.out.url(shards_folder(mix)) if mix else None
        if counts is None:
            self.stage(stage.MIX, None)
            return
        written_to = stage.mix_written_key(mix, self.out.url())
        groups = plan_mix(self.recipe, processed, counts, shards_folder(mix))
        folders = [stage.MIX.folder(written_to, stage.mix_group_part(g.split, g.number)) for g in groups]
        self.stage(stage.MIX, folders, why_new=self._why_mix())

    def _measure(self, records: list[dict | None]) -> None:
        """The process stage's rate (input bytes per second of one task) from its finished tasks, else from the
        earlier build's manifest in OUT."""
        done = [(i.size, r["seconds"]) for i, r in zip(self.inputs, records) if r is not None and r.get("seconds")]
        if done:
            self.plan.rate = (sum(b for b, _ in done) / sum(s for _, s in done), f"{len(done)} finished process tasks")
            return
        process = (self.earlier or {}).get("stages", {}).get("process", {})
        made = process.get("made_by", process)
        if made.get("task_seconds") and made.get("input_bytes"):
            self.plan.rate = (made["input_bytes"] / made["task_seconds"], "the earlier build's process stage")

    def _why_process(self, records: list[dict | None]) -> str:
        if self.earlier is None:
            return "no output made from these files and settings yet (a first build)"
        reasons = []
        before = {(i["source"], i["split"], i["path"]) for i in self.earlier.get("inputs", [])}
        new = sum((i.source.name, i.split, i.rel_path) not in before for i in self.inputs)
        if new:
            reasons.append(f"{new} new input files")
        if self.earlier.get("tokenizer", {}).get("sha256") != self.tokenizer.sha256():
            reasons.append("another tokenizer")
        was = self.earlier.get("recipe", {})
        if was.get("dedupe") != dataclasses.asdict(self.recipe.dedupe):
            reasons.append("other dedupe settings")
        sources = {s.get("name"): s for s in was.get("sources", [])}
        for s in self.recipe.sources:
            now = {k: v for k, v in dataclasses.asdict(s).items() if k not in ("weight", "train", "validation")}
            if s.name in sources and {k: sources[s.name].get(k) for k in now} != now:
                reasons.append(f"other settings of source {s.name}")
        now_decontaminate = (
            dataclasses.asdict(self.recipe.decontaminate) if self.recipe.decontaminate is not None else None
        )
        if was.get("decontaminate") != now_decontaminate:
            reasons.append("other eval sets or decontamination settings")
        changed = "input files rewritten since the earlier build (their size or version differ)"
        return ", ".join(reasons) or changed + (", or the eval sets' contents" if now_decontaminate else "")

    def _why_mix(self) -> str:
        was = (self.earlier or {}).get("recipe", {})
        weights = [[s.get("name"), s.get("weight")] for s in was.get("sources", [])]
        if self.earlier and (
            was.get("mix") != dataclasses.asdict(self.recipe.mix)
            or weights != [[s.name, s.weight] for s in self.recipe.sources]
        ):
            return "another mix: the weights or the mix settings changed"
        return "no output made from these inputs and settings yet"


def _read_json(store: Store, rel: str) -> dict | None:
    try:
        return store.read_json(rel)
    except (FileNotFoundError, ValueError):
        return None


def plan_build(recipe: Recipe, out_url: str, work_url: str | None = None) -> Plan:
    """The plan of `tokenmill build RECIPE --out OUT [--work WORK]`; reads, writes nothing."""
    validate_filters(recipe)
    tokenizer = recipe_tokenizer(recipe)
    inputs = list_inputs(recipe)
    out = Store.at(out_url)
    if tokenizer is None and out.exists(TOKENIZER_MODEL):  # trained by an earlier run of this build
        tokenizer = Tokenizer.from_bytes(
            out.read_bytes(TOKENIZER_MODEL), recipe.tokenizer.add_bos, recipe.tokenizer.add_eos
        )
    work = Store.at(work_url) if work_url else out.child("work")
    return _Planner(recipe, inputs, tokenizer, out, work).run()


def describe(plan: Plan, workers: int | None) -> list[str]:
    """The plan as the console prints it."""
    lines = [f"plan of tokenmill build {plan.recipe} (a dry run: nothing is written, no task runs)", "inputs:"]
    for name in dict.fromkeys(i.source.name for i in plan.inputs):
        mine = [i for i in plan.inputs if i.source.name == name]
        splits = ", ".join(f"{split} {sum(i.split == split for i in mine)}" for split in ("train", "validation"))
        lines.append(f"  {name:<16} {len(mine):>7,} files {human_bytes(sum(i.size for i in mine)):>10}  ({splits})")
    lines.append(f"stages:            {'tasks':>7} {'re-used':>8} {'to run':>7}  why")
    for s in plan.stages:
        tasks = f"{s.tasks:>7,}" if s.tasks is not None else f"{'?':>7}"
        left = f"{s.tasks - s.reused:>7,}" if s.tasks is not None else f"{'all':>7}"
        lines.append(f"  {s.name:<16} {tasks} {s.reused:>8,} {left}  {s.why}")
    lines.append(_estimate(plan, workers))
    lines += [
        "writes:",
        f"  output   {plan.out}  (manifest.json, quarantine.jsonl, dropped_samples.jsonl, build_stats.json, "
        "tokenizer.model, build.log.jsonl, report/)",
        f"  shards   {plan.shards + '/' if plan.shards else 'OUT/shards-<mix>/ (named once the dedupe is known)'}",
        f"  work     {plan.work}",
    ]
    return lines


def _estimate(plan: Plan, workers: int | None) -> str:
    left = plan.process_bytes_left
    if not left:
        return "cost: no input file to process; the later stages read the work store's outputs"
    if plan.rate is None:
        return (
            f"cost: {human_bytes(left)} of input to process; no rate measured yet (no process task has finished here)"
        )
    rate, where = plan.rate
    core_s = left / rate
    workers = workers or os.cpu_count() or 1
    return (
        f"cost: {human_bytes(left)} of input to process at {rate / 1e6:.2f} MB/s per task ({where}): "
        f"~{_duration(core_s)} of task time, ~{_duration(core_s / workers)} on {workers} workers; later stages not "
        "estimated"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"
