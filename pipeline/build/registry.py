"""The build's stages in the order they run: one entry each, and everything else derives from this table.

An entry names the stage (the console, build.log.jsonl, build_stats.json, the report and `tokenmill work` all
use that name, and it is the stage's top folder in the work store), the plain function one of its tasks runs,
the function that names a task's folder by what its output is made from, and what the stage does in one line.
The driver (`pipeline.build.driver`) runs the stages in this order; `tokenmill work` lists and prunes by them;
the report orders its timings by them. Adding a stage is one entry here plus its task module in
`pipeline/tasks/`.

Every task folder is `<stage>/<key>[/<part>]`, where the key is a fingerprint of everything the output was
made from, so a relaunch re-uses exactly the outputs whose inputs and settings are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.build.inputs import InputFile
from pipeline.build.recipe import Recipe
from pipeline.tasks import components, count, decontaminate, dedupe, mix, process, samples, verify
from pipeline.work.runner import Task
from pipeline.work.store import fingerprint
from stages.tokenize import Tokenizer

# a source's settings that do not change what its files' processing produces
_NOT_PROCESS_SETTINGS = ("weight", "train", "validation")


def _dedupe_settings(recipe: Recipe) -> dict:
    """The dedupe settings up to the resolve stage: the verify threshold's value is only the verify key's
    (whether there is one decides whether the process task writes signatures)."""
    settings = dataclasses.asdict(recipe.dedupe)
    settings["minhash"]["threshold"] = recipe.dedupe.minhash.verify
    return settings


def decontaminate_key(made_from: dict) -> str:
    """The eval sets' bytes (sha256 each) and rules, and the tokenizer when a set counts tokens
    (`pipeline.tasks.decontaminate.index_made_from`)."""
    return fingerprint({"decontaminate": made_from})


def process_key(inp: InputFile, tokenizer: Tokenizer, recipe: Recipe, index_key: str = "") -> str:
    """The file itself, its source's read and filter settings, the tokenizer, the dedupe key settings and, when
    the recipe decontaminates, the index's key (a recipe without eval sets keys its files as before)."""
    return process_keys([inp], tokenizer, recipe, index_key)[0]


def process_keys(inputs: list[InputFile], tokenizer: Tokenizer, recipe: Recipe, index_key: str = "") -> list[str]:
    """`process_key` of every input file, what they share worked out once: hashing the tokenizer's model and
    copying the settings for each of 60k files kept the driver a minute from the first task after process."""
    tokenize = {"sha256": tokenizer.sha256(), "add_bos": recipe.tokenizer.add_bos, "add_eos": recipe.tokenizer.add_eos}
    dedupe = _dedupe_settings(recipe)
    sources = {
        s.name: {k: v for k, v in dataclasses.asdict(s).items() if k not in _NOT_PROCESS_SETTINGS}
        for s in {inp.source.name: inp.source for inp in inputs}.values()
    }
    keys = []
    for inp in inputs:
        made_from = {
            "input": inp.identity(),
            "source": sources[inp.source.name],
            "tokenizer": tokenize,
            "dedupe": dedupe,
        }
        if index_key:
            made_from["decontaminate"] = index_key
        keys.append(fingerprint(made_from))
    return keys


def key_group_key(group: list[process.Processed], partitions: int) -> str:
    """The group's files (position and process output) and the number of partitions their keys are cut into."""
    # "funnels": its record carries its files' funnels and filter samples (an earlier version's does not)
    return fingerprint({"files": [[p.file_index, p.folder] for p in group], "partitions": partitions, "funnels": 2})


def dedupe_key(process_keys: list[str], recipe: Recipe) -> str:
    """Every process output, in the canonical order (it decides which copy of a duplicate survives)."""
    return fingerprint({"process": process_keys, "dedupe": _dedupe_settings(recipe)})


def components_key(dedupe: str, cuts: list[int]) -> str:
    """The dedupe edges and the node ranges the clustering is spread over (tasks and rounds follow from both)."""
    return fingerprint({"dedupe": dedupe, "ranges": cuts})


def verify_key(dedupe: str, recipe: Recipe) -> str:
    """The resolved clusters and the verify threshold: a new threshold re-runs the verify stages, count and mix
    only. Their tasks are per node range: `components_key(verify_key, ranges)` names their folders."""
    return fingerprint({"dedupe": dedupe, "threshold": recipe.dedupe.minhash.threshold})


def count_key(key_group_folder: str, resolved_folder: str) -> str:
    """The group's keys, the removals that count reads, how many removed documents it lists per step, and the
    version of its record (2: kept tokens per subset of each file too, what domain weights plan from)."""
    return fingerprint(
        {
            "keys": key_group_folder,
            "resolved": resolved_folder,
            "samples": samples.PER_STEP,
            "record": count.RECORD_VERSION,
        }
    )


def samples_key(chosen: list[samples.DuplicateCandidate], folders: dict[int, str]) -> str:
    """The chosen duplicates and the process outputs of the files they are read from."""
    return fingerprint(samples.samples_key(chosen, folders))


def mix_key(deduplicated: str, recipe: Recipe) -> str:
    """The deduplicated corpus (the verify key when there is one) and the mix settings: policy, seed, shard
    size, token budget, each source's weight and the domains. It names the output's shard folder too. A setting
    added later enters only when used, so that the shards of a recipe without it keep their folder."""
    weights = [[s.name, s.weight] for s in recipe.sources]
    mix = {k: v for k, v in dataclasses.asdict(recipe.mix).items() if k != "budget_tokens" or v}
    key = {"dedupe": deduplicated, "mix": mix, "weights": weights}
    if recipe.domains:
        key["domains"] = [[d.name, d.source, list(d.subsets or []), d.weight] for d in recipe.domain_list()]
    return fingerprint(key)


def mix_written_key(mix: str, out_url: str) -> str:
    """A mix group's task folder: the mix and the output it writes to (another output sharing the work store
    writes its own copy of the shards)."""
    return fingerprint({"mix": mix, "out": out_url})


@dataclass(frozen=True, slots=True)
class Stage:
    name: str  # as the console, the log, the report and `tokenmill work` call it; its top folder in the work store
    run: Callable[..., dict]  # what one task runs: a plain function that writes its outputs and returns its done record
    key: Callable[..., str]  # names a task's folder by what its output is made from
    does: str  # one line for people
    verify_only: bool = False  # runs only when the recipe verifies near-duplicates (dedupe.minhash.verify)
    decontaminate_only: bool = False  # runs only when the recipe has eval sets (`decontaminate:`)

    def runs_for(self, recipe: Recipe) -> bool:
        verifies, decontaminates = bool(recipe.dedupe.minhash.verify), recipe.decontaminate is not None
        return (verifies or not self.verify_only) and (decontaminates or not self.decontaminate_only)

    def folder(self, key: str, part: str = "") -> str:
        """A task folder of this stage: the only code that formats a work path."""
        return f"{self.name}/{key}/{part}" if part else f"{self.name}/{key}"

    def task(self, folder: str, *args, input_bytes: int = 0, input: str = "") -> Task:
        return Task(folder, self.run, args, input_bytes, input)


def partition_part(partition: int) -> str:
    return f"partition-{partition:05d}"


def range_part(node_range: int, rnd: int | None = None) -> str:
    return f"range-{node_range:05d}" if rnd is None else f"round-{rnd:03d}/range-{node_range:05d}"


def mix_group_part(split: str, group: int) -> str:
    return f"{split}-{group:05d}"


DECONTAMINATE = Stage(
    "decontaminate",
    decontaminate.build_index_task,
    decontaminate_key,
    "the eval sets' n-gram index, built once per their content (bytes and rule)",
    decontaminate_only=True,
)
PROCESS = Stage(
    "process",
    process.process_file,
    process_key,
    "parse, filter, [decontaminate,] compute dedupe keys and tokenize one input file (the only stage that reads text)",
)
KEYS = Stage(
    "keys",
    dedupe.combine_keys,
    key_group_key,
    "one key group's dedupe keys, read once per file and written in partition order",
)
DEDUPE = Stage(
    "dedupe",
    dedupe.dedupe_partition,
    dedupe_key,
    "one key partition: equal keys become edges to the group's smallest document",
)
PROPAGATE = Stage(
    "propagate",
    components.propagate,
    components_key,
    "one node range's cluster labels lowered by the last answers; its asks to the ranges it points into",
)
ANSWER = Stage(
    "answer",
    components.answer,
    components_key,
    "one node range's labels lowered by the proposals it got; the labels each asking range asked for",
)
REMOVALS = Stage(
    "removals",
    components.removals,
    components_key,
    "one node range's removed documents, their survivors, and its members per survivor",
)
SIZES = Stage("sizes", components.sizes, components_key, "one survivor range's cluster sizes")
RESOLVE = Stage(
    "resolve",
    components.write_resolved,
    dedupe_key,
    "the removals streamed into one sorted list with an index by input file; each cluster's earliest document survives",
)
SIGNATURES = Stage(
    "signatures",
    verify.send_signatures,
    verify_key,
    "one survivor range's survivors' signatures, read once from its files, sent to the ranges whose removals ask",
    verify_only=True,
)
VERIFY = Stage(
    "verify",
    verify.verify_range,
    verify_key,
    "one node range's removals compared with their survivors; the candidates sent to their survivors' ranges",
    verify_only=True,
)
CENTERS = Stage(
    "centers",
    verify.find_centers,
    verify_key,
    "one survivor range's clusters' kept documents, from their candidates; sent to the ranges whose removals ask",
    verify_only=True,
)
VERDICTS = Stage(
    "verdicts",
    verify.verdicts,
    verify_key,
    "one node range's removals compared with the kept documents before them; what stays removed",
    verify_only=True,
)
VERIFIED = Stage(
    "verified",
    components.write_resolved,
    verify_key,
    "the verified removals streamed into the resolve format",
    verify_only=True,
)
COUNT = Stage(
    "count",
    count.count_kept,
    count_key,
    "one key group's kept documents and tokens per file, and its first removed documents",
)
SAMPLES = Stage(
    "samples",
    samples.read_duplicates,
    samples_key,
    "a few removed duplicates' text read back, beside the documents kept in their place",
)
MIX = Stage(
    "mix",
    mix.mix_group,
    mix_written_key,
    "one mix group: every source's same token range, mixed in the recipe's ratio into shards",
)

STAGES: tuple[Stage, ...] = (
    DECONTAMINATE,
    PROCESS,
    KEYS,
    DEDUPE,
    PROPAGATE,
    ANSWER,
    REMOVALS,
    SIZES,
    RESOLVE,
    SIGNATURES,
    VERIFY,
    CENTERS,
    VERDICTS,
    VERIFIED,
    COUNT,
    SAMPLES,
    MIX,
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stages_of(recipe: Recipe) -> tuple[Stage, ...]:
    """The stages a build of this recipe runs, in order."""
    return tuple(s for s in STAGES if s.runs_for(recipe))
