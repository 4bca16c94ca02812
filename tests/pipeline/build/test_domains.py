"""Domain weights: a recipe that weights a source's subsets (or named groups of them) instead of whole sources,
built end to end on a real embedded Ray over the real sample corpus; and the recipe checks of `domains:`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from manifests.shards import read_index
from pipeline.build.driver import build, domain_members
from pipeline.build.recipe import RecipeError, load_recipe
from pipeline.ops.verify import verify
from pipeline.sample_corpus import sample_recipe
from pipeline.tasks.process import Processed
from stages.mix import DomainConfig, resolve_domains
from tests.support.faults import shard_bytes, stable_manifest

DOMAINS = [
    {"name": "book", "source": "slimpajama", "subsets": ["RedPajamaBook"], "weight": 3},
    {"name": "docs", "source": "slimpajama", "weight": 3},  # every other SlimPajama subset
    {"name": "python", "source": "starcoderdata", "weight": 4},
]
SHARES = {"book": 0.3, "docs": 0.3, "python": 0.4}


@pytest.fixture(scope="module")
def by_domain(local_ray, sample_corpus, tmp_path_factory):
    """The sample recipe weighted by domains (downsample), 2 workers, several mix groups of 2 shards."""
    folder = tmp_path_factory.mktemp("domains")
    recipe = load_recipe(
        sample_recipe(sample_corpus, folder, domains=DOMAINS, mix={"shard_tokens": 40_000, "shards_per_group": 2})
    )
    build(recipe, str(folder / "out"), workers=2, console=False)
    return folder / "out"


def test_every_shard_holds_each_domains_share(by_domain):
    manifest = json.loads((by_domain / "manifest.json").read_text())
    names = [d["name"] for d in sorted(manifest["domains"], key=lambda d: d["id"])]
    assert names == ["book", "docs", "python"] and manifest["stages"]["mix"]["tasks"] >= 3
    shards = manifest["splits"]["train"]["shards"]
    largest = int(max(read_index(by_domain / s["idx"]).doc_lengths().max() for s in shards))
    assert len(manifest["splits"]["train"]["shards"]) >= 4
    for shard in manifest["splits"]["train"]["shards"]:
        index = read_index(by_domain / shard["idx"])
        recount = np.bincount(index.source_ids, weights=index.doc_lengths(), minlength=3).astype(int)
        assert dict(zip(names, recount.tolist())) == shard["tokens_by_domain"]  # the index holds domain ids
        assert shard["tokens_by_source"] == {
            "slimpajama": int(recount[0] + recount[1]),
            "starcoderdata": int(recount[2]),
        }
        for name, share in SHARES.items():
            # within 1% of the target share, or, for shards too small for that, within one document's tokens
            off_by = abs(shard["tokens_by_domain"][name] - share * shard["tokens"])
            assert off_by <= max(0.01 * shard["tokens"], largest), (shard["bin"], name)
    achieved = manifest["mix"]["achieved_by_domain"]["train"]
    assert all(abs(achieved[n] - s) < 0.01 for n, s in SHARES.items())
    # downsample per domain: the poorest domain is taken whole, the others cut; the sources' epochs are their domains'
    epochs = {d["name"]: d["epochs"] for d in manifest["domains"]}
    assert max(epochs.values()) == 1.0 and all(0 < e <= 1.0 for e in epochs.values())
    train_kept = {d["name"]: d["tokens_kept"]["train"] for d in manifest["domains"]}
    for name in names:
        assert manifest["splits"]["train"]["tokens_by_domain"][name] == pytest.approx(
            epochs[name] * train_kept[name], abs=largest * 4
        )
    # each domain's tokens are its source's subsets' kept tokens
    subsets = {s["name"]: s["subsets"] for s in manifest["sources"]}
    kept = sum(
        d["tokens_kept"][split] for d in manifest["domains"] if d["name"] == "book" for split in ("train", "validation")
    )
    assert kept == subsets["slimpajama"]["RedPajamaBook"]["tokens_kept"]
    # the validation split keeps each document's domain: listed per domain, every domain there
    validation = manifest["splits"]["validation"]["tokens_by_domain"]
    held = {d["name"] for d in manifest["domains"] if d["tokens_kept"]["validation"]}
    assert set(validation) == set(names) and held and {n for n, t in validation.items() if t} == held
    assert sum(validation.values()) == manifest["splits"]["validation"]["tokens"]
    _, problems = verify(by_domain / "manifest.json")
    assert problems == []


def test_a_domain_build_does_not_depend_on_the_worker_count(by_domain, tmp_path):
    build(load_recipe(by_domain.parent / "recipe.yaml"), str(tmp_path / "out"), workers=1, console=False)
    assert shard_bytes(tmp_path / "out") == shard_bytes(by_domain)
    assert stable_manifest(tmp_path / "out") == stable_manifest(by_domain)


@pytest.mark.slow
def test_a_domain_build_killed_mid_mix_resumes_to_identical_bytes(by_domain, tmp_path):
    """Killed with SIGKILL once some mix groups finished (the processed corpus re-used from the fixture's work
    store), then run again: the same shards and manifest."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        str(by_domain.parent / "recipe.yaml"),
        "--out",
        str(out),
        "--work",
        str(by_domain / "work"),
        "--workers",
        "1",
        "--no-report",
    ]
    # a different --out is a different mix task folder: its groups run again, into this output
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    written = lambda: len(list(out.glob("shards-*/train/*.idx")))  # noqa: E731
    while written() < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "manifest.json").exists() and written() >= 2
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert shard_bytes(out) == shard_bytes(by_domain)
    ours, theirs = stable_manifest(out), stable_manifest(by_domain)
    for m in (ours, theirs):
        m.pop("provenance")
        m["stages"] = {k: {f: v for f, v in t.items() if f != "documents"} for k, t in m["stages"].items()}
    assert ours == theirs


def test_the_trainer_reports_validation_loss_per_domain(by_domain, tmp_path):
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "--manifest",
        str(by_domain / "manifest.json"),
        "--out",
        str(tmp_path / "run"),
        "--nproc",
        "1",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-tokens",
        "512",
        "--micro-batch",
        "8",
        "--eval-every",
        "3",
        "--eval-windows",
        "64",
        "--save-every",
        "0",
        "--log-every",
        "1",
        "--no-compile",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    evals = [
        r for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"
    ]
    by, tokens = evals[-1]["val_loss_by_domain"], evals[-1]["val_tokens_by_domain"]
    assert set(by) <= set(SHARES) and len(by) >= 2 and sum(tokens.values()) == 64 * 64
    assert sum(by[d] * tokens[d] for d in by) / sum(tokens.values()) == pytest.approx(evals[-1]["val_loss"], rel=1e-9)
    console = done.stderr
    assert "step 3 | validation loss" in console and all(
        f"{d} {by[d]:.4f}" in console for d in by
    )  # the eval line and the summary


@pytest.mark.parametrize(
    "domains, message",
    [
        ([{"name": "a", "source": "nowhere"}], "is not a source of the recipe"),
        (
            [
                {"name": "a", "source": "slimpajama", "subsets": ["X"]},
                {"name": "b", "source": "slimpajama", "subsets": ["X"]},
                {"name": "c", "source": "starcoderdata"},
            ],
            "is already in domain 'a'",
        ),
        ([{"name": "a", "source": "slimpajama"}], "source 'starcoderdata' is in no domain"),
        (
            [{"name": "a", "source": "slimpajama", "weight": 0}, {"name": "b", "source": "starcoderdata", "weight": 0}],
            "sum to 0",
        ),
        (
            [{"name": "a", "source": "slimpajama", "weight": -1}, {"name": "b", "source": "starcoderdata"}],
            "is not a number >= 0",
        ),
        (
            [
                {"name": "a", "source": "slimpajama"},
                {"name": "b", "source": "slimpajama"},
                {"name": "c", "source": "starcoderdata"},
            ],
            "already takes the rest",
        ),
    ],
)
def test_domains_that_cannot_work_are_refused_naming_the_field(sample_corpus, tmp_path, domains, message):
    with pytest.raises(RecipeError, match="recipe field `domains") as e:
        load_recipe(sample_recipe(sample_corpus, tmp_path, domains=domains))
    assert message in str(e.value)


def test_a_subset_in_no_domain_is_refused():
    domains = resolve_domains([("web", 1.0), ("code", 1.0)], [])
    files = [Processed(0, "process/a", "web", 10, ["A", "B"]), Processed(1, "process/b", "code", 5, ["py"])]
    kept = {0: [[5, 7], [0, 0]], 1: [[9], [1]]}
    members, filtered = domain_members(domains, files, kept)
    assert members == {0: {0: [0, 1]}, 1: {1: [0]}} and filtered == {}  # one domain per source: no subset filter
    named = resolve_domains(
        [("web", 1.0), ("code", 1.0)],
        [DomainConfig(name="a", source="web", subsets=["A"]), DomainConfig(name="code", source="code")],
    )
    with pytest.raises(RecipeError, match="subset 'B' of source 'web' has kept documents but is in no domain"):
        domain_members(named, files, kept)
