"""Decontamination end to end on a real embedded Ray: eval items planted in the sample corpus (`pipeline.sample_eval`)
are found and dropped, the clean corpus gives no false match against a plain-Python reference, the output does
not depend on the number of workers, inputs and eval sets on S3 (a real S3 API) give the same output, a rebuild
re-uses every task, a worker or the driver killed mid-process changes nothing (the driver's rerun redoes no
finished task), and an eval set added to a built corpus re-runs what depends on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import fsspec
import pytest
import ray

from bench.s3_store import BUCKET, FaultProxy, S3Server
from manifests.outputs import BUILD_LOG, DECONTAMINATION
from pipeline.build.driver import build
from pipeline.build.recipe import load_recipe
from pipeline.ops.decontam_check import check
from pipeline.report.stats import write_report
from pipeline.sample_corpus import sample_recipe
from pipeline.sample_eval import CODE_VARIANTS, NATURAL_VARIANTS, plant_eval_items
from stages.decontaminate import DecontaminateConfig, EvalSetConfig
from stages.document import DocBatch
from stages.fetch import read_documents
from stages.normalize import DELETE_PUNCTUATION_AND_SPACE, normalize
from tests.support.cluster import ObjectStore, build_env
from tests.support.faults import (
    Run,
    alive,
    done_tasks,
    shard_bytes,
    stable_manifest,
    start_build,
    tasks_run,
    tokenmill,
    wait_for,
)

NATURAL_FIELDS, CODE_FIELDS = ["question", "answer"], ["prompt", "solution"]


def eval_sets(eval_dir: Path | str, action: str = "drop", extra: bool = False) -> dict:
    """The recipe's `decontaminate:` section over the sets in `eval_dir` (a folder or an s3:// URL)."""
    sets = [
        {"name": "natural", "files": [f"{eval_dir}/natural.jsonl"], "fields": NATURAL_FIELDS},
        {"name": "code", "files": [f"{eval_dir}/code*.jsonl"], "fields": CODE_FIELDS},  # a glob
    ]
    if extra:
        sets.append({"name": "extra", "files": [f"{eval_dir}/extra.txt"]})
    return {"sets": sets, "action": action}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def planted(sample_corpus, tmp_path_factory) -> Path:
    """A copy of the sample with the eval sets' items planted (the shared sample stays as it is)."""
    folder = tmp_path_factory.mktemp("planted")
    shutil.copytree(sample_corpus, folder / "corpus")
    plant_eval_items(folder / "corpus", folder / "eval")
    return folder


@pytest.fixture(scope="module")
def builds(local_ray, planted, sample_corpus, tmp_path_factory) -> dict[str, Path]:
    """drop2/drop1: the planted corpus, drop, 2 and 1 workers; flag: the clean sample, flag (every match listed)."""
    outs = {}
    for name, corpus, action, workers in (
        ("drop2", planted / "corpus", "drop", 2),
        ("drop1", planted / "corpus", "drop", 1),
        ("flag", sample_corpus, "flag", 2),
    ):
        folder = tmp_path_factory.mktemp(name)
        recipe = sample_recipe(corpus, folder, decontaminate=eval_sets(planted / "eval", action))
        build(load_recipe(recipe), str(folder / "out"), workers=workers, console=False)
        outs[name] = folder / "out"
    return outs


def decontamination(out: Path) -> dict:
    return {s["name"]: s for s in json.loads((out / DECONTAMINATION).read_text())["sets"]}


def test_planted_items_are_found_and_dropped_and_none_is_left_in_the_shards(builds, planted):
    found = decontamination(builds["drop2"])
    matched = {name: {i["item"] for i in s["matched_items"]} for name, s in found.items()}
    plan = json.loads((planted / "eval" / "PLANTED_EVAL.json").read_text())["planted"]
    for set_name, variants in (("natural", NATURAL_VARIANTS), ("code", CODE_VARIANTS)):
        for variant in variants:
            items = [p["item"] for p in plan[set_name] if p["variant"] == variant]
            recall = sum(i in matched[set_name] for i in items) / len(items)
            assert recall >= (1.0 if variant in ("verbatim", "embedded") or set_name == "code" else 0.99), (
                set_name,
                variant,
                recall,
            )
    assert len(plan["natural"]) + len(plan["code"]) >= 300
    manifest = json.loads((builds["drop2"] / "manifest.json").read_text())
    dropped = {s["name"]: s["dropped"] for s in manifest["sources"]}
    planted_docs = {
        src: len({p["doc"] for kind in plan.values() for p in kind if p["doc"].startswith(src)})
        for src in ("slimpajama", "starcoderdata")
    }
    assert dropped["slimpajama"]["decontaminated:natural"] >= planted_docs["slimpajama"]
    assert dropped["starcoderdata"]["decontaminated:code"] >= planted_docs["starcoderdata"]
    entries = {s["name"]: s for s in manifest["decontamination"]["sets"]}
    assert entries["natural"]["rule"] == {"unit": "words", "n": 13, "min_share": 0.0, "min_words": 8}
    assert len(entries["natural"]["sha256"]) == 64 and entries["code"]["items"] == 80
    # no document of the shards holds an item: the shards decoded with the build's tokenizer and matched again
    config = DecontaminateConfig(
        sets=[
            EvalSetConfig(name="natural", files=[str(planted / "eval" / "natural.jsonl")], fields=NATURAL_FIELDS),
            EvalSetConfig(name="code", files=[str(planted / "eval" / "code.jsonl")], fields=CODE_FIELDS),
        ]
    )
    result = check(builds["drop2"] / "manifest.json", config)
    assert result["documents"] > 0 and all(s["documents"] == 0 for s in result["sets"].values()), result["sets"]
    # examples with the matched span and the item, in dropped_samples.jsonl and the report
    lines = [json.loads(line) for line in (builds["drop2"] / "dropped_samples.jsonl").read_text().splitlines()]
    decontaminated = [line for line in lines if line["step"] == "decontamination"]
    assert {line["eval_set"] for line in decontaminated} == {"natural", "code"}
    assert all(line["match"] in line["text"] and line["item_text"] for line in decontaminated)
    page = write_report(
        builds["drop2"] / "manifest.json", builds["drop2"].parent / "report", verify_bins=False
    ).read_text()
    assert '<section id="decontamination">' in page and "decontamination-samples" in page


def _grams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_the_clean_corpus_gives_no_false_match(builds, planted):
    """Every flagged document shares a normalized 13-gram with an item (a plain-Python reference), and every such
    document is flagged: false matches 0 of the corpus's documents."""
    out = builds["flag"]
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = load_recipe(out.parent / "recipe.yaml")
    items = {}
    for name, fields in (("natural", NATURAL_FIELDS), ("code", CODE_FIELDS)):
        for line in (planted / "eval" / f"{name}.jsonl").read_text().splitlines():
            items[name] = items.get(name, set()) | _grams("\n".join(json.loads(line)[f] for f in fields))
    expected, documents = {"natural": set(), "code": set()}, 0
    for entry in manifest["inputs"]:
        source = recipe.source(entry["source"])
        fs, root = fsspec.core.url_to_fs(source.root)
        for batch in read_documents(fs, f"{root}/{entry['path']}", entry["path"], source, 256):
            if isinstance(batch, DocBatch):
                for i, (text, subset) in enumerate(zip(batch.texts, batch.subsets)):
                    documents += 1
                    if subset in source.exclude_subsets or len(text.translate(DELETE_PUNCTUATION_AND_SPACE)) < 200:
                        continue  # dropped by the recipe's filters (subset rule, short_document) before matching
                    for name, grams in items.items():
                        if _grams(text) & grams:
                            expected[name].add(batch.doc_id(i))
    found = decontamination(out)
    flagged = {name: {doc for doc, _ in s["flagged_docs"]} for name, s in found.items()}
    print(
        f"clean corpus: {documents} documents; flagged { ({n: len(f) for n, f in flagged.items()}) } (true 13-gram "
        "overlaps)"
    )
    for name in expected:
        assert flagged[name] - expected[name] == set(), "false matches"
        assert expected[name] - flagged[name] == set(), "missed matches"
    assert documents > 250
    assert all(
        s["dropped"] == 0 and s["flagged"] == len(flagged[s["name"]]) for s in manifest["decontamination"]["sets"]
    )


def test_one_or_two_workers_give_the_same_bytes(builds):
    a, b = builds["drop2"], builds["drop1"]
    assert shard_bytes(a) == shard_bytes(b)
    assert stable_manifest(a) == stable_manifest(b)
    for name in (DECONTAMINATION, "dropped_samples.jsonl", "quarantine.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def assert_same_decontaminated_output(out: Path, reference: Path) -> None:
    assert shard_bytes(out) == shard_bytes(reference)
    assert stable_manifest(out) == stable_manifest(reference)
    assert (out / DECONTAMINATION).read_bytes() == (reference / DECONTAMINATION).read_bytes()


def shards_by_name(out: Path) -> dict[str, bytes]:
    """`shard_bytes` by split and file name, without the folder named by what they were made from."""
    return {path.split("/", 1)[1]: data for path, data in shard_bytes(out).items()}


def test_inputs_and_eval_sets_on_s3_give_the_local_build_s_output(builds, planted, tmp_path):
    """The planted corpus and both eval sets in a bucket of a real S3 API (moto, reached through
    AWS_ENDPOINT_URL as S3 is), the build a `tokenmill build` process of its own with 2 workers: the same items
    found, the same shards and the same report as the build from local files."""
    server = S3Server()
    store = ObjectStore(server, FaultProxy(server.port))  # faults off: a plain relay
    try:
        server.upload(planted / "corpus", f"s3://{BUCKET}/planted")
        server.upload(planted / "eval", f"s3://{BUCKET}/eval")
        recipe = sample_recipe(f"s3://{BUCKET}/planted", tmp_path, decontaminate=eval_sets(f"s3://{BUCKET}/eval"))
        run = Run.start(
            tokenmill("build", str(recipe), "--out", str(tmp_path / "out"), "--workers", "2", "--no-report"),
            tmp_path / "build.stderr",
            env=build_env(store),
        )
        assert run.wait(timeout=600) == 0, run.stderr()[-3000:]
    finally:
        store.proxy.stop()
        server.stop()
    out, reference = tmp_path / "out", builds["drop2"]
    # the same shards, in a folder of their own (what they are made from names the inputs' URLs)
    assert shards_by_name(out) == shards_by_name(reference)
    found, expected = decontamination(out), decontamination(reference)
    assert found["natural"]["files"] == [f"s3://{BUCKET}/eval/natural.jsonl"]
    assert found["code"]["files"] == [f"s3://{BUCKET}/eval/code.jsonl"]
    for name in ("natural", "code"):
        assert found[name]["documents"] > 0 and found[name]["dropped"] == expected[name]["dropped"]
        assert found[name]["sha256"] == expected[name]["sha256"]
        assert found[name]["matched_items"] == expected[name]["matched_items"]
    manifest, local = (json.loads((o / "manifest.json").read_text()) for o in (out, reference))
    assert [s["dropped"] for s in manifest["sources"]] == [s["dropped"] for s in local["sources"]]


def test_a_rebuild_with_the_same_eval_sets_re_uses_every_task(builds, tmp_path):
    """A copy of the build (its work dir too) built again: the index and every process task re-used, only the mix
    runs (its shards are written where OUT now is); built once more into the same OUT, no task runs."""
    out = tmp_path / "out"
    shutil.copytree(builds["drop2"], out)
    recipe = load_recipe(builds["drop2"].parent / "recipe.yaml")
    for expected in ({"mix"}, set()):
        log_lines = len((out / BUILD_LOG).read_text().splitlines())
        build(recipe, str(out), workers=2, console=False)
        assert {task.split("/")[0] for task in tasks_run(out, since_line=log_lines)} == expected
        assert_same_decontaminated_output(out, builds["drop2"])


def test_an_added_eval_set_re_runs_what_depends_on_it_and_says_so(builds, planted, tmp_path):
    extra = planted / "eval" / "extra.txt"
    natural = [json.loads(line) for line in (planted / "eval" / "natural.jsonl").read_text().splitlines()]
    extra.write_text("".join(f"{i['question']} {i['answer']}\n" for i in natural[-5:]))  # never planted
    out = tmp_path / "out"
    shutil.copytree(builds["drop2"], out)  # an earlier build's output, decontamination.json included
    log_lines = len((out / BUILD_LOG).read_text().splitlines())
    recipe = sample_recipe(planted / "corpus", tmp_path, decontaminate=eval_sets(planted / "eval", extra=True))
    run = start_build(recipe, out, "--workers", "2")  # the command, for what its console says
    assert run.wait() == 0, run.stderr()[-3000:]
    said = [line for line in run.stderr().splitlines() if line.startswith("decontaminate: eval sets")]
    assert len(said) == 1 and "added extra since the build in" in said[0], run.stderr()[-3000:]
    assert "every input file is processed again" in said[0] and "re-runs: process, keys, dedupe" in said[0]
    events = [json.loads(line) for line in (out / BUILD_LOG).read_text().splitlines()[log_lines:]]
    changed = [e for e in events if e["event"] == "decontaminate_changed"]
    assert changed and changed[0]["added"] == ["extra"] and changed[0]["removed"] == []
    ran = [e["task"].split("/")[0] for e in events if e["event"] == "task_done"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert ran.count("process") == len(manifest["inputs"]) and ran.count("decontaminate") == 1
    assert [s["name"] for s in manifest["decontamination"]["sets"]] == ["natural", "code", "extra"]
    # the new set's items were never planted: the same shards (in a folder of their own: what they were made from
    # changed)
    assert shards_by_name(out) == shards_by_name(builds["drop2"])


def test_a_missing_eval_file_is_refused_in_one_line_before_any_work(planted, tmp_path):
    sets = eval_sets(planted / "eval")
    sets["sets"][1]["files"] = [str(planted / "eval" / "nowhere.jsonl")]
    recipe = sample_recipe(planted / "corpus", tmp_path, decontaminate=sets)
    done = subprocess.run(
        tokenmill("build", str(recipe), "--out", str(tmp_path / "out")), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'code'" in lines[0] and "nowhere.jsonl" in lines[0] and "fix" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_worker_killed_mid_process_is_retried_and_the_output_is_identical(builds, tmp_path):
    run = start_build(builds["drop2"].parent / "recipe.yaml", tmp_path / "out", "--workers", "2")
    pid, task = run.kill_first("ray::process/")
    assert run.wait() == 0, run.stderr()[-3000:]
    assert not alive(pid) and task.removeprefix("ray::") in tasks_run(tmp_path / "out")
    assert_same_decontaminated_output(tmp_path / "out", builds["drop2"])


@pytest.mark.slow
def test_the_driver_killed_mid_process_resumes_without_redoing_the_index_or_a_finished_task(builds, tmp_path):
    out, recipe = tmp_path / "out", builds["drop2"].parent / "recipe.yaml"
    first = start_build(recipe, out, "--workers", "1")
    wait_for(lambda: sum(t.startswith("process/") for t in done_tasks(out)) >= 3, "3 finished process tasks", first)
    os.kill(first.pid, signal.SIGKILL)  # the driver alone, as kill -9 would
    first.process.wait()
    first.stop()  # what is left of its Ray processes, by PID
    finished = done_tasks(out)
    assert any(t.startswith("decontaminate/") for t in finished) and not (out / "manifest.json").exists()
    log_lines = len((out / BUILD_LOG).read_text().splitlines())
    second = start_build(recipe, out, "--workers", "2")
    assert second.wait() == 0, second.stderr()[-3000:]
    redone = tasks_run(out, since_line=log_lines)
    assert redone and set(redone).isdisjoint(finished), "a task that had finished ran again"
    assert_same_decontaminated_output(out, builds["drop2"])
