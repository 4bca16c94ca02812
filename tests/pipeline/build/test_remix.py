"""A new mix, a new setting, another output: each re-runs exactly the stages whose inputs changed, and gives
exactly what a fresh build of the changed recipe gives (real Ray, real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.manifest import load
from manifests.outputs import MANIFEST
from pipeline.build.driver import build
from pipeline.build.recipe import load_recipe
from pipeline.build.registry import stages_of
from pipeline.sample_corpus import sample_recipe
from pipeline.work.commands import entries, main
from pipeline.work.store import Store
from tests.support.faults import shard_bytes, stable_manifest

ALL = tuple(s.name for s in stages_of(load_recipe("sample")))


def _ran(out: Path) -> set[str]:
    """The stages in which at least one task ran (was not re-used)."""
    stages = load(out).stages
    return {name for name, t in stages.items() if t["skipped"] < t["tasks"]}


def _same_as_fresh(recipe: Path, out: Path, fresh: Path) -> None:
    build(load_recipe(recipe), str(fresh), workers=2, console=False)
    assert shard_bytes(out) == shard_bytes(fresh)
    ours, theirs = stable_manifest(out), stable_manifest(fresh)
    for m in (ours, theirs):  # where the work store is, and what was re-used, is about the run, not the data
        m.pop("provenance")
        m["stages"] = {k: {f: v for f, v in t.items() if f != "documents"} for k, t in m["stages"].items()}
    assert ours == theirs


@pytest.mark.slow
def test_each_change_reruns_exactly_the_stages_that_depend_on_it(local_ray, sample_corpus, tmp_path):
    base = {"mix": {"shard_tokens": 60_000, "shards_per_group": 2}}
    out = tmp_path / "out"
    build(load_recipe(sample_recipe(sample_corpus, tmp_path / "r0", **base)), str(out), workers=2, console=False)
    first_shards = load(out).splits["train"].shards[0].bin.split("/")[0]
    sources = [
        {"name": "slimpajama", "root": str(sample_corpus / "SlimPajama-627B")},
        {"name": "starcoderdata", "root": str(sample_corpus / "starcoderdata")},
    ]
    code_files = len(list((sample_corpus / "starcoderdata").rglob("*.parquet")))
    changes = {  # change: (stages that run, process tasks that run)
        "weights 6:4": ({"sources": [{**sources[0], "weight": 6}, {**sources[1], "weight": 4}]}, {"mix"}, 0),
        "shard size": ({"mix": {"shard_tokens": 40_000, "shards_per_group": 2}}, {"mix"}, 0),
        "a filter of one source": (
            {"sources": [sources[0], {**sources[1], "filters": {"code": {}}}]},
            set(ALL),
            code_files,
        ),
        "BOS added": ({"tokenizer": {"add_bos": True}}, set(ALL), "all"),
        "MinHash bands": ({"dedupe": {"minhash": {"bands": 8}}}, set(ALL), "all"),
    }
    for i, (name, (change, stages, processed)) in enumerate(changes.items(), start=1):
        recipe = sample_recipe(sample_corpus, tmp_path / f"r{i}", **{**base, **change})
        build(load_recipe(recipe), str(out), workers=2, console=False)
        process = load(out).stages["process"]
        assert _ran(out) == stages, name
        assert process["tasks"] - process["skipped"] == (process["tasks"] if processed == "all" else processed), name
        _same_as_fresh(recipe, out, tmp_path / f"fresh{i}")
    # the earlier builds' shard folders are gone: every shard file in the output is one the manifest lists
    listed = {path for info in load(out).splits.values() for s in info.shards for path in (s.bin, s.idx)}
    on_disk = {
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.suffix in (".bin", ".idx") and "work" not in p.relative_to(out).parts
    }
    assert on_disk == listed and not (out / first_shards).exists()


@pytest.mark.slow
def test_two_outputs_share_one_work_store(local_ray, sample_corpus, tmp_path):
    work = tmp_path / "work"
    build(
        load_recipe(sample_recipe(sample_corpus, tmp_path / "a")),
        str(tmp_path / "mix73"),
        workers=2,
        console=False,
        work_url=str(work),
    )
    sources = [
        {"name": "slimpajama", "root": str(sample_corpus / "SlimPajama-627B"), "weight": 6},
        {"name": "starcoderdata", "root": str(sample_corpus / "starcoderdata"), "weight": 4},
    ]
    recipe = sample_recipe(sample_corpus, tmp_path / "b", sources=sources)
    build(load_recipe(recipe), str(tmp_path / "mix64"), workers=2, console=False, work_url=str(work))
    assert _ran(tmp_path / "mix64") == {"mix"}
    assert load(tmp_path / "mix64").provenance.work == f"file://{work}"
    _same_as_fresh(recipe, tmp_path / "mix64", tmp_path / "fresh")
    assert (tmp_path / "mix73" / MANIFEST).exists() and not (tmp_path / "mix73/work").exists()
    assert len(list((work / "uses").glob("*.json"))) == 2
    # `tokenmill work`: both outputs use the shared stages; removing one output's manifest frees its mix outputs
    both = {f"file://{tmp_path / name / MANIFEST}" for name in ("mix73", "mix64")}
    listed = entries(Store.at(str(work)))
    assert all(set(e.used_by) == both for e in listed if not e.folder.startswith("mix/"))
    mix73_only = [e.folder for e in listed if e.used_by == [f"file://{tmp_path / 'mix73' / MANIFEST}"]]
    assert mix73_only and all(f.startswith("mix/") for f in mix73_only)
    (tmp_path / "mix73" / MANIFEST).unlink()
    assert main(["prune", str(work)]) == 0
    assert sorted(e.folder for e in entries(Store.at(str(work)))) == sorted(
        e.folder for e in listed if e.folder not in mix73_only
    )
    assert main(["ls", str(tmp_path / "nowhere")]) == 2
