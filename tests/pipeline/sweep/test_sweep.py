"""`tokenmill sweep` end to end on the CPU: a real build of a corpus of four clearly different domains (prose,
docstrings, Python, C), eight tiny proxies trained by the real trainer (torchrun-style ranks over gloo) as Ray
tasks, the fit, the proposal and the files; a kill -9 in the middle and a resume; bad input refused."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from manifests.shards import read_index
from pipeline.build.recipe import load_recipe
from pipeline.sweep import fit
from tests.pipeline.sweep.corpus import DOMAINS, write_corpus, write_recipe

NAMES = [d["name"] for d in DOMAINS]
# about 3 minutes for the whole module on two idle cores (8 proxies of ~15 s, 2 at a time, twice 2-3 more after
# the kill); the limit is for a machine shared with other work
pytestmark = pytest.mark.timeout(2400)
PROXY = {
    "budget_tokens": 100_000,
    "preset": "tiny-2k",
    "steps": 50,
    "batch_tokens": 2048,
    "micro_batch": 32,
    "lr": 0.01,
    "warmup_steps": 5,
    "eval_windows": 256,
}
FILES = ("ratios.csv", "metrics.csv", "sweep.json", "recommended.yaml", "report/report.html")


def tokenmill(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def write_sweep(folder: Path, base: Path, **changes) -> Path:
    data = {
        "recipe": str(base / "sweep-recipe" / "recipe.yaml"),
        "work": str(base / "out" / "work"),
        "mixtures": {"count": 8, "draw": "dirichlet", "concentration": 1.0, "seed": 0},
        "proxy": PROXY,
        "objective": {"kind": "mean"},
    }
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(data))
    return folder / "sweep.yaml"


@pytest.fixture(scope="module")
def base(sample_corpus, tmp_path_factory) -> Path:
    """The four-domain corpus built once by `tokenmill build` (its work store is what the sweeps read)."""
    folder = tmp_path_factory.mktemp("sweep-base")
    corpus = write_corpus(sample_corpus, folder / "corpus")
    recipe = write_recipe(corpus, folder)
    done = tokenmill("build", str(recipe), "--out", str(folder / "out"), "--workers", "2", "--no-report", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    write_recipe(corpus, folder / "sweep-recipe", tokenizer=folder / "out" / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def swept(base, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    done = tokenmill("sweep", str(write_sweep(folder, base)), "--out", str(folder / "out"), "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 of 8 trained earlier; training 8" in done.stderr
    return folder / "out"


def test_the_sweep_writes_the_csvs_the_report_and_the_recipe(swept, base):
    with open(swept / "ratios.csv") as f:
        ratios = list(csv.DictReader(f))
    with open(swept / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert len(ratios) == len(metrics) == 8 and [r["run_id"] for r in ratios] == [m["run_id"] for m in metrics]
    assert list(ratios[0]) == ["run_id", "name", *NAMES] and ratios[0]["name"] == "base"
    assert all(abs(sum(float(r[d]) for d in NAMES) - 1) < 1e-4 for r in ratios)
    assert list(metrics[0]) == ["run_id", "name", "val_loss", *(f"val_loss/{d}" for d in NAMES)]
    base_weights = np.asarray([d["weight"] for d in DOMAINS], float)
    assert np.allclose([float(ratios[0][d]) for d in NAMES], base_weights / base_weights.sum(), atol=1e-6)
    res = json.loads((swept / "sweep.json").read_text())
    recommended = load_recipe(swept / "recommended.yaml")
    assert {d.name: d.weight for d in recommended.domains} == pytest.approx(
        {d: round(w, 4) for d, w in res["proposal"]["weights"].items()}
    )
    assert recommended.mix.budget_tokens == 0 and [s.name for s in recommended.sources] == [
        "slimpajama",
        "starcoderdata",
    ]
    page = (swept / "report/report.html").read_text()
    for figure in ("predicted-vs-measured", "weights", *(f"loss-vs-weight-{d}" for d in NAMES)):
        assert f'data-figure="{figure}"' in page
    assert 'data-table="proposal"' in page and 'data-table="proxies"' in page
    # each proxy corpus: the mix stage only (nothing re-processed), the budget in the mixture's ratio, the same
    # validation split
    validation = set()
    for proxy in sorted((swept / "proxies").iterdir()):
        manifest = json.loads((proxy / "manifest.json").read_text())
        assert {s for s, t in manifest["stages"].items() if t["skipped"] < t["tasks"]} == {"mix"}
        # the budget to within one document per domain and mix group (the one that crosses each domain's share)
        largest = max(
            int(read_index(proxy / e["idx"]).doc_lengths().max()) for e in manifest["splits"]["train"]["shards"]
        )
        assert abs(manifest["splits"]["train"]["tokens"] - PROXY["budget_tokens"]) <= len(NAMES) * largest
        validation.add(
            json.dumps([(s["bin_sha256"], s["idx_sha256"]) for s in manifest["splits"]["validation"]["shards"]])
        )
    assert len(validation) == 1  # every proxy is evaluated on the same tokens


def test_the_fit_ranks_held_out_mixtures(swept):
    res = json.loads((swept / "sweep.json").read_text())
    rho = res["fit"]["spearman"]
    assert all(rho[d] >= 0.8 for d in NAMES), rho  # leave-one-out: each proxy predicted by a law fitted without it
    weights = np.asarray([[p["weights"][d] for d in NAMES] for p in res["proxies"]])
    losses = np.asarray([[p["val_loss_by_domain"][d] for d in NAMES] for p in res["proxies"]])
    predicted = fit.cross_validated(weights, losses)  # the same numbers as the file's, recomputed
    assert np.allclose(predicted, [[p["predicted_cv"][d] for d in NAMES] for p in res["proxies"]])


def test_up_weighting_a_domain_lowers_its_predicted_and_measured_loss(swept):
    res = json.loads((swept / "sweep.json").read_text())
    weights = np.asarray([[p["weights"][d] for d in NAMES] for p in res["proxies"]])
    losses = np.asarray([[p["val_loss_by_domain"][d] for d in NAMES] for p in res["proxies"]])
    laws = fit.fit_all(weights, losses)
    for i, name in enumerate(NAMES):
        assert fit.spearman(weights[:, i], losses[:, i]) <= -0.8, name  # measured: more weight, lower loss
        more = weights[0].copy()
        more[i] += 0.2
        more /= more.sum()
        assert laws[i].predict(more)[0] < laws[i].predict(weights[0])[0], name  # predicted
    prop = res["proposal"]
    assert prop["objective"] <= prop["base_objective"] and all(
        0 <= w <= res["target"]["caps"][d] + 1e-9 for d, w in prop["weights"].items()
    )


@pytest.mark.slow
def test_a_killed_sweep_trains_only_the_missing_proxies_and_ends_with_the_same_files(swept, base, tmp_path):
    """A copy of the finished sweep without three of its proxy runs is resumed, killed (SIGKILL to the sweep and
    every process it started) once one more proxy finished, and run again: it trains only the two missing."""
    out = tmp_path / "out"
    shutil.copytree(swept, out)
    for name in FILES:
        (out / name).unlink()
    runs = sorted((out / "runs").iterdir())
    for run in runs[-3:]:
        shutil.rmtree(run)
    sweep = write_sweep(tmp_path, base)
    command = [sys.executable, "-m", "pipeline.cli", "sweep", str(sweep), "--out", str(out), "--workers", "2"]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    finished = lambda: len([r for r in (out / "runs").iterdir() if not r.name.startswith(".")])  # noqa: E731
    while finished() < 6 and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = finished()  # 6, or 7 if the other proxy in flight finished in the same moment
    assert 6 <= before < 8 and not (out / "sweep.json").exists()
    done_before = {
        r.name: (r / "_DONE.json").read_bytes() for r in (out / "runs").iterdir() if not r.name.startswith(".")
    }
    second = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    # a Ray worker of the killed sweep may still finish its proxy before the new sweep looks: at least `before`
    earlier, trained = map(int, re.search(r"(\d+) of 8 trained earlier; training (\d+)", second.stderr).groups())
    assert earlier >= before and earlier + trained == 8 and trained >= 1
    assert all((out / "runs" / name / "_DONE.json").read_bytes() == record for name, record in done_before.items())
    assert not [r for r in (out / "runs").iterdir() if r.name.startswith(".")]  # the killed attempts' folders are gone
    for name in FILES:
        assert (out / name).read_bytes() == (swept / name).read_bytes(), name


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(base, tmp_path):
    cases = {
        "no processed outputs": ({"work": str(tmp_path / "empty-work")}, "lacks the outputs of stage `process`"),
        "a domain too small": (
            {"proxy": {**PROXY, "budget_tokens": 10_000_000}},
            "train tokens, but a proxy at its largest weight",
        ),
        "an unknown domain in the objective": (
            {"objective": {"kind": "domain", "domain": "fortran"}},
            "'fortran' is not a domain of the sweep",
        ),
        "weights that do not sum to something positive": (
            {"mixtures": {"draw": "list", "weights": [{"c": 0}, {"c": 1}, {"bible": 1}]}},
            "sum to something positive",
        ),
    }
    (tmp_path / "empty-work").mkdir()
    for what, (change, message) in cases.items():
        out = tmp_path / "out"
        done = tokenmill(
            "sweep", str(write_sweep(tmp_path / what.replace(" ", "-"), base, **change)), "--out", str(out), timeout=300
        )
        assert done.returncode == 2, (what, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (what, done.stderr)
        assert not out.exists(), what
        recipe = base / "sweep-recipe" / "recipe.yaml"
        assert what != "no processed outputs" or f"tokenmill build {recipe} --work" in lines[0]
