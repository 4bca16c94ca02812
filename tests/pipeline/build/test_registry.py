"""The stage registry: which stages a recipe runs, where each writes, and what each key is made from (a key
that changes too little re-uses a stale output; one that changes too much re-runs work for nothing)."""

from __future__ import annotations

import inspect

from pipeline.build import registry
from pipeline.build.recipe import load_recipe


def test_a_recipe_runs_the_optional_stages_only_when_it_asks_for_them():
    names = [s.name for s in registry.stages_of(load_recipe("sample"))]  # tinyllama's unverified preset
    clusters = ["propagate", "answer", "removals", "sizes", "resolve"]
    assert names == ["process", "keys", "dedupe", *clusters, "count", "samples", "mix"]
    verify = ["signatures", "verify", "centers", "verdicts", "verified"]
    verified = ["process", "keys", "dedupe", *clusters, *verify, "count", "samples", "mix"]
    assert [s.name for s in registry.stages_of(load_recipe("web-quality"))] == verified


def test_every_stage_writes_under_its_own_top_folder():
    assert len(set(registry.STAGE_NAMES)) == len(registry.STAGES)
    for stage in registry.STAGES:
        assert stage.folder("k") == f"{stage.name}/k"
        assert stage.folder("k", registry.partition_part(3)) == f"{stage.name}/k/partition-00003"
        # the runner hands a task its folder first: that is where it writes and marks itself done
        assert next(iter(inspect.signature(stage.run).parameters)) == "folder"


def test_the_process_key_changes_with_what_processing_reads_and_not_with_the_mix():
    base = load_recipe("sample")
    reweighted = load_recipe(
        "sample", {"sources": [{"name": "slimpajama", "weight": 0.6}, {"name": "starcoderdata", "weight": 0.4}]}
    )
    refiltered = load_recipe(
        "sample", {"sources": [{"name": "slimpajama", "filters": {"short_document": {"min_chars": 500}}}]}
    )

    def key(recipe):
        return registry.process_key(_first_input(recipe), _Tokenizer(), recipe)

    assert key(base) == key(reweighted) != key(refiltered)
    dedupe = registry.dedupe_key(["p"], base)
    assert registry.mix_key(dedupe, base) != registry.mix_key(dedupe, reweighted)


class _Tokenizer:
    """What process_key reads of a tokenizer: its model's hash."""

    def sha256(self) -> str:
        return "0" * 64


def _first_input(recipe):
    from pipeline.build.inputs import InputFile

    rel_path = "train/chunk1/example_train_0.jsonl.zst"
    return InputFile(
        file_index=0,
        source=recipe.sources[0],
        url=f"/corpus/{rel_path}",
        rel_path=rel_path,
        split="train",
        size=1,
        version="v1",
    )
