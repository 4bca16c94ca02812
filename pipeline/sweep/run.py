"""`tokenmill sweep SWEEP.yaml`: choose the mix with evidence, read top to bottom.

    check   the sweep file, the base recipe, the mixtures, the objective, and that the work store holds every
            stage of the base recipe before the mix (walked with a runner that may run nothing), and that every
            domain holds what the largest weight any mixture gives it takes of the proxy budget
            (else one line, exit 2, nothing written)
    build   one proxy corpus per mixture: the base recipe with the mixture's domain weights and
            `mix.budget_tokens`, built on the same work store (only the mix stage runs: `reuse_only`)
    train   one proxy per mixture with `tokenmill train` (same seed, same validation split: a budget mix takes
            the validation split whole, whatever the weights), each a Ray task holding a GPU where the cluster has
            them, CPUs otherwise; a proxy whose done record exists is never trained again
    fit     a law of each domain's validation loss against the weights, its leave-one-out rank correlation,
            and the mixture minimising the objective under each domain's cap (`pipeline.sweep.fit`)
    write   ratios.csv + metrics.csv (one row per proxy, Olmix's layout), sweep.json, report/report.html and
            recommended.yaml (the base recipe with the proposed domain weights)

Every folder is named by a fingerprint of what it holds (the mixture and the base recipe for a proxy corpus; that
corpus's shards and the training settings for a proxy run), so a changed sweep never re-uses a stale proxy.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from manifests import manifest as manifest_io
from pipeline.build.driver import build, domain_tokens, processed_corpus
from pipeline.build.inputs import list_inputs
from pipeline.build.recipe import Recipe, RecipeError, recipe_from_dict
from pipeline.build.registry import STAGE_NAMES
from pipeline.build.tokenizer import recipe_tokenizer
from pipeline.sweep import fit
from pipeline.sweep.config import Sweep, SweepError, load_sweep
from pipeline.tasks import decontaminate as decontam
from pipeline.work.progress import EventLog
from pipeline.work.runner import BuildError, MissingOutputs, Runner, start_ray
from pipeline.work.store import Store, fingerprint

BEFORE_MIX = frozenset(name for name in STAGE_NAMES if name != "mix")
DONE = "_DONE.json"
OUTPUTS = ("ratios.csv", "metrics.csv", "sweep.json", "recommended.yaml", "report/report.html")


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked sweep: its base recipe, domains, mixtures (rows sum to 1, the base first) and the caps."""

    sweep: Sweep
    recipe: Recipe
    domains: list[str]
    mixtures: np.ndarray  # (K, D)
    coefficients: np.ndarray  # the objective over the domains' losses
    tokens: dict[str, dict[str, int]]  # per split, each domain's kept tokens
    caps: np.ndarray  # (D,) the largest weight each domain may take in the target run
    target_tokens: float
    out: Path


def plan(sweep: Sweep, out: str | None, workers: int | None, address: str | None) -> Plan:
    """Everything checked, nothing written; raises SweepError with one line."""
    recipe = recipe_from_dict(sweep.recipe_data)
    domains = [d.name for d in recipe.domain_list()]
    base = np.asarray([d.weight for d in recipe.domain_list()], float)
    mixtures = _mixtures(sweep, domains, base / base.sum())
    named = {"weighted": list(sweep.objective.weights), "domain": [sweep.objective.domain]}.get(
        sweep.objective.kind, []
    )
    unknown = [d for d in named if d not in domains]
    if unknown:
        raise SweepError(
            f"sweep field `objective`: {unknown[0]!r} is not a domain of the sweep; domains: {', '.join(domains)}"
        )
    out_dir = out or sweep.out
    if not out_dir or "://" in out_dir:
        raise SweepError(
            "give the sweep's output folder (`--out DIR` or `out:` in the sweep file; a local folder: proxies "
            "train from it)"
        )
    if recipe.tokenizer.train is not None or not recipe.tokenizer.model:
        raise SweepError(
            f"recipe {sweep.recipe_path}: the sweep needs the build's tokenizer as `tokenizer.model` "
            "(OUT/tokenizer.model of the build)"
        )
    tokens = _processed_tokens(sweep, recipe, workers, address)
    budget = sweep.proxy.budget_tokens
    for i, name in enumerate(domains):
        need = budget * float(mixtures[:, i].max())
        if tokens["train"][name] < need:
            raise SweepError(
                f"domain {name!r} holds {tokens['train'][name]:,} train tokens, but a proxy at its largest weight "
                f"({mixtures[:, i].max():.1%} of {budget:,}) needs {need:,.0f}: lower proxy.budget_tokens, or draw "
                "narrower mixtures (a higher mixtures.concentration); a proxy never repeats data"
            )
    for name in domains:
        if tokens["validation"][name] == 0:
            raise SweepError(
                f"domain {name!r} has no validation tokens: its loss cannot be measured; give its source validation "
                "files or a validation_fraction"
            )
    target = sweep.target.tokens or float(sum(tokens["train"].values()))
    caps = np.minimum(1.0, np.asarray([tokens["train"][d] for d in domains], float) * sweep.target.max_epochs / target)
    if caps.sum() < 1:
        raise SweepError(
            f"the domains hold too few tokens for target.tokens {target:,.0f} at target.max_epochs "
            f"{sweep.target.max_epochs}: "
            "no mixture fits; lower the target or raise the cap"
        )
    return Plan(
        sweep,
        recipe,
        domains,
        mixtures,
        np.asarray(sweep.objective.coefficients(domains)),
        tokens,
        caps,
        target,
        Path(out_dir).resolve(),
    )


def _mixtures(sweep: Sweep, domains: list[str], base: np.ndarray) -> np.ndarray:
    m = sweep.mixtures
    if m.draw == "dirichlet":
        return fit.dirichlet_mixtures(base, m.count, m.concentration, m.seed)
    rows = []
    for k, given in enumerate(m.weights):
        unknown = [d for d in given if d not in domains]
        if unknown:
            raise SweepError(
                f"sweep field `mixtures.weights[{k}]`: {unknown[0]!r} is not a domain; domains: {', '.join(domains)}"
            )
        row = np.asarray([float(given.get(d, 0.0)) for d in domains])
        if (row < 0).any() or not row.sum() > 0:
            raise SweepError(
                f"sweep field `mixtures.weights[{k}]`: weights must be >= 0 and sum to something positive, got {given}"
            )
        rows.append(row / row.sum())
    return np.vstack([base] + rows)


def _processed_tokens(
    sweep: Sweep, recipe: Recipe, workers: int | None, address: str | None
) -> dict[str, dict[str, int]]:
    """Walk the base recipe's stages before the mix on the work store with a runner that may run nothing: every
    output must be there. Returns each domain's kept tokens per split."""
    if "://" not in sweep.work and not Path(sweep.work).is_dir():
        raise SweepError(
            f"work store {sweep.work} does not exist; build the base recipe into it first: "
            f"tokenmill build {sweep.recipe_path} --work {sweep.work} --out DIR"
        )
    tokenizer = recipe_tokenizer(recipe)
    inputs = list_inputs(recipe)
    workers = start_ray(address, workers)
    runner = Runner(Store.at(sweep.work), workers, EventLog(None, console=False), reuse_only=BEFORE_MIX)
    try:
        eval_sets = decontam.eval_sets(recipe.decontaminate) if recipe.decontaminate else []
        corpus = processed_corpus(recipe, inputs, tokenizer, runner, Store.at(sweep.work), eval_sets)
    except MissingOutputs as e:
        raise SweepError(
            f"work store {sweep.work} lacks the outputs of stage `{e.stage}` for recipe {sweep.recipe_path} "
            f"({e.missing} of {e.tasks} tasks): build it first (nothing is re-processed by a sweep): "
            f"tokenmill build {sweep.recipe_path} --work {sweep.work} --out DIR"
        ) from None
    return domain_tokens(recipe, corpus.processed, corpus.counts)


# ------------------------------------------------------------------------------------------------ proxy corpora


def proxy_recipe(p: Plan, k: int) -> dict:
    """The base recipe with mixture k's domain weights and the proxy budget."""
    data = copy.deepcopy(p.sweep.recipe_data)
    data["name"] = f"{p.recipe.name}-proxy-{k:02d}"
    data["domains"] = [
        {"name": d.name, "source": d.source, "subsets": list(d.subsets or []), "weight": round(float(w), 6)}
        for d, w in zip(p.recipe.domain_list(), p.mixtures[k])
    ]
    data.setdefault("mix", {})["budget_tokens"] = p.sweep.proxy.budget_tokens
    return data


def build_proxies(p: Plan, workers: int | None, address: str | None, say) -> tuple[list[Path], list[float]]:
    """One proxy corpus per mixture (skipped where its manifest exists); their manifests and build seconds."""
    manifests, seconds = [], []
    for k in range(len(p.mixtures)):
        data = proxy_recipe(p, k)
        folder = p.out / "proxies" / f"mix-{k:02d}-{fingerprint(data)[:10]}"
        manifests.append(folder / "manifest.json")
        if manifests[-1].exists():
            seconds.append(0.0)
            continue
        started = time.perf_counter()
        build(
            recipe_from_dict(data),
            str(folder),
            workers,
            address,
            console=False,
            work_url=p.sweep.work,
            reuse_only=BEFORE_MIX,
        )
        seconds.append(time.perf_counter() - started)
        say(f"[proxy corpora] mix-{k:02d}: {_weights_text(p.domains, p.mixtures[k])} built in {seconds[-1]:.1f}s")
    return manifests, seconds


def _weights_text(domains: list[str], weights: np.ndarray) -> str:
    return ", ".join(f"{d} {w:.1%}" for d, w in zip(domains, weights))


# ------------------------------------------------------------------------------------------------ proxy runs


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the Ray worker that started it dies (a killed sweep), which the
    launcher passes to its ranks; no trainer is left running, orphaned, after a kill -9."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the orphan trains into its own temporary folder, harmless
        pass


def train_proxy(manifest: str, run: str, train_args: list[str], nproc: int, threads: int) -> dict:
    """One proxy trained from scratch with `tokenmill train` into a temporary folder of its own, its last
    evaluation read from metrics.jsonl, its done record written, and the folder renamed to `run` last: a run
    folder exists only for a finished proxy, whatever was killed when."""
    started = time.perf_counter()
    tmp = Path(run).with_name(f".{Path(run).name}.tmp-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "--manifest",
        manifest,
        "--out",
        str(tmp),
        "--nproc",
        str(nproc),
        *train_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        raise RuntimeError(f"proxy {run} failed (exit {done.returncode}): {done.stderr[-1500:]}")
    records = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if r.get("kind") == "eval"][-1]
    last_train = [r for r in records if r.get("kind") == "train"][-1]
    record = {
        "val_loss": last_eval["val_loss"],
        "val_loss_by_domain": last_eval["val_loss_by_domain"],
        "val_tokens_by_domain": last_eval["val_tokens_by_domain"],
        "train_loss": last_train["loss"],
        "step": last_eval["step"],
        "seconds": time.perf_counter() - started,
    }
    (tmp / DONE).write_text(json.dumps(record, indent=1, sort_keys=True))
    try:
        os.rename(tmp, run)
    except OSError:  # another attempt finished first: its results are the same (same seed, same data)
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def train_proxies(p: Plan, manifests: list[Path], say) -> tuple[list[dict], list[str], int]:
    """Every proxy's done record (those found are not trained again), its run id, and how many were trained."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    proxy = p.sweep.proxy
    args = proxy.train_args()
    runs, records = [], []
    for k, manifest in enumerate(manifests):
        mix_key = manifest_io.load(manifest).provenance.mix
        runs.append(f"mix-{k:02d}-{fingerprint({'shards': mix_key, 'train': args, 'nproc': proxy.nproc})[:10]}")
        done = p.out / "runs" / runs[-1] / DONE
        records.append(json.loads(done.read_text()) if done.exists() else None)
    pending = [k for k, r in enumerate(records) if r is None]
    say(
        f"[proxies] {len(records) - len(pending)} of {len(records)} trained earlier; training {len(pending)} "
        f"({proxy.preset}, {proxy.steps} steps, {'GPU' if gpus else f'CPU, {proxy.threads} thread(s)'} each)"
    )
    resources = {"num_gpus": proxy.nproc, "num_cpus": 1} if gpus else {"num_cpus": proxy.threads * proxy.nproc}
    remote = ray.remote(max_retries=0, **resources)(train_proxy)
    in_flight = {
        remote.options(name=f"sweep/{runs[k]}").remote(
            str(manifests[k]), str(p.out / "runs" / runs[k]), args, proxy.nproc, proxy.threads
        ): k
        for k in pending
    }
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        k = in_flight.pop(ready[0])
        try:
            records[k] = ray.get(ready[0])
        except Exception as e:  # a proxy that failed: name it; the finished ones are kept for the next run
            raise BuildError(f"[proxies] {runs[k]} failed: {getattr(e, 'cause', None) or e}") from e
        say(f"[proxies] {runs[k]} done in {records[k]['seconds']:.0f}s: validation loss {records[k]['val_loss']:.4f}")
    for stale in (p.out / "runs").glob(".*.tmp-*"):  # what killed attempts left: their trainers died with them
        shutil.rmtree(stale, ignore_errors=True)
    return records, runs, len(pending)


# ------------------------------------------------------------------------------------------------ results


def results(p: Plan, records: list[dict], runs: list[str]) -> dict:
    """The fit, its cross-validated rank correlations, the proposal and everything the report shows."""
    losses = np.asarray([[r["val_loss_by_domain"][d] for d in p.domains] for r in records])
    predicted = fit.cross_validated(p.mixtures, losses)
    laws = fit.fit_all(p.mixtures, losses)
    proposal = fit.propose(
        p.mixtures, losses, p.coefficients, p.caps, p.mixtures[0], p.sweep.mixtures.concentration, p.sweep.mixtures.seed
    )
    objective = losses @ p.coefficients
    rho = {d: fit.spearman(predicted[:, i], losses[:, i]) for i, d in enumerate(p.domains)}
    rho["objective"] = fit.spearman(predicted @ p.coefficients, objective)
    return {
        "domains": p.domains,
        "proxies": [
            {
                "run_id": run,
                "name": "base" if k == 0 else f"mix-{k:02d}",
                "weights": dict(zip(p.domains, p.mixtures[k].tolist())),
                "val_loss": r["val_loss"],
                "val_loss_by_domain": {d: r["val_loss_by_domain"][d] for d in p.domains},
                "predicted_cv": dict(zip(p.domains, predicted[k].tolist())),
                "objective": float(objective[k]),
            }
            for k, (run, r) in enumerate(zip(runs, records))
        ],
        "fit": {
            "law": "L_i(r) = c_i + exp(sum_j t_ij r_j)",
            "cv": "leave-one-out",
            "spearman": rho,
            "laws": {d: {"c": law.floor, "t": dict(zip(p.domains, law.t.tolist()))} for d, law in zip(p.domains, laws)},
        },
        "objective": {"kind": p.sweep.objective.kind, "coefficients": dict(zip(p.domains, p.coefficients.tolist()))},
        "target": {
            "tokens": p.target_tokens,
            "max_epochs": p.sweep.target.max_epochs,
            "caps": dict(zip(p.domains, p.caps.tolist())),
            "train_tokens": p.tokens["train"],
            "validation_tokens": p.tokens["validation"],
        },
        "proposal": {
            "weights": dict(zip(p.domains, proposal.weights.tolist())),
            "base_weights": dict(zip(p.domains, p.mixtures[0].tolist())),
            "predicted": dict(zip(p.domains, proposal.predicted.tolist())),
            "predicted_spread": dict(zip(p.domains, proposal.predicted_spread.tolist())),
            "base_predicted": dict(zip(p.domains, proposal.base_predicted.tolist())),
            "base_predicted_spread": dict(zip(p.domains, proposal.base_predicted_spread.tolist())),
            "objective": proposal.objective,
            "base_objective": proposal.base_objective,
            "gain": {
                "median": proposal.gain_median,
                "spread": proposal.gain_spread,
                "interval_90": list(proposal.gain_interval),
            },
        },
        "proxy": {
            "preset": p.sweep.proxy.preset,
            "steps": p.sweep.proxy.steps,
            "budget_tokens": p.sweep.proxy.budget_tokens,
            "seed": p.sweep.proxy.seed,
        },
        "base_recipe": str(p.sweep.recipe_path),
        "work": p.sweep.work,
    }


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def recommended_recipe(p: Plan, weights: dict[str, float]) -> str:
    """The base recipe, flattened (its `extends` merged, paths absolute), with the proposed domain weights."""
    data = copy.deepcopy(p.sweep.recipe_data)
    data["name"] = f"{p.recipe.name}-recommended"
    data["domains"] = [
        {"name": d.name, "source": d.source, "subsets": list(d.subsets or []), "weight": round(weights[d.name], 4)}
        for d in p.recipe.domain_list()
    ]
    recipe_from_dict(copy.deepcopy(data))  # what we write must load
    head = (
        f"# The mix `tokenmill sweep` proposes: the base recipe {p.sweep.recipe_path} with the domain weights\n"
        f"# that minimise the predicted {p.sweep.objective.kind} validation loss (sweep.json and report/report.html\n"
        "# beside this file say from which proxies, and how sure).\n"
    )
    return head + yaml.safe_dump(data, sort_keys=False)


def write_outputs(p: Plan, res: dict) -> None:
    from pipeline.sweep.report import render

    files = {
        "ratios.csv": _csv(
            ["run_id", "name", *p.domains],
            [[x["run_id"], x["name"], *(f"{x['weights'][d]:.6f}" for d in p.domains)] for x in res["proxies"]],
        ),
        "metrics.csv": _csv(
            ["run_id", "name", "val_loss", *(f"val_loss/{d}" for d in p.domains)],
            [
                [
                    x["run_id"],
                    x["name"],
                    f"{x['val_loss']:.6f}",
                    *(f"{x['val_loss_by_domain'][d]:.6f}" for d in p.domains),
                ]
                for x in res["proxies"]
            ],
        ),
        "sweep.json": json.dumps(res, indent=1, sort_keys=True) + "\n",
        "recommended.yaml": recommended_recipe(p, res["proposal"]["weights"]),
        "report/report.html": render(res),
    }
    for name, text in files.items():
        path = p.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def run(p: Plan, workers: int | None, address: str | None, say) -> dict:
    started = time.perf_counter()
    manifests, build_seconds = build_proxies(p, workers, address, say)
    records, runs, trained = train_proxies(p, manifests, say)
    res = results(p, records, runs)
    write_outputs(p, res)
    timings = {"proxy_builds_s": build_seconds, "proxies_trained": trained, "wall_s": time.perf_counter() - started}
    (p.out / "timings.json").write_text(
        json.dumps(timings, indent=1) + "\n"
    )  # apart from sweep.json: a resumed sweep's files stay the same
    return res


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill sweep",
        description="Train proxy models on mixtures of a processed corpus, fit each domain's "
        "validation loss against the weights, and propose the mix that minimises the objective.",
    )
    parser.add_argument(
        "sweep", help="SWEEP.yaml: base recipe, work store, domains, mixtures, proxy, objective, target"
    )
    parser.add_argument("--out", default=None, help="output folder (default: the sweep file's `out`)")
    parser.add_argument(
        "--workers", type=int, default=None, help="builds' tasks at a time (default: every CPU of the Ray cluster)"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (e.g. auto); default: an embedded local Ray"
    )
    args = parser.parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        p = plan(load_sweep(args.sweep), args.out, args.workers, args.address)
    except (SweepError, RecipeError, manifest_io.ManifestError) as e:
        print(f"tokenmill sweep: {e}", file=sys.stderr)
        return 2
    say(f"tokenmill sweep: {len(p.mixtures)} mixtures over {', '.join(p.domains)}; output {p.out}")
    try:
        res = run(p, args.workers, args.address, say)
    except (BuildError, OSError, ValueError) as e:
        print(
            f"tokenmill sweep: {type(e).__name__}: {e}\n  finished proxies are kept: run the same command again to "
            "go on",
            file=sys.stderr,
        )
        return 1
    prop, rho = res["proposal"], res["fit"]["spearman"]
    say(
        f"fit: leave-one-out Spearman rho {', '.join(f'{d} {rho[d]:.2f}' for d in p.domains)}; objective "
        f"{rho['objective']:.2f}"
    )
    say(
        f"proposed: {_weights_text(p.domains, np.asarray([prop['weights'][d] for d in p.domains]))}; predicted "
        f"{p.sweep.objective.kind} loss "
        f"{prop['objective']:.4f} against the base's {prop['base_objective']:.4f} (gain {prop['gain']['median']:.4f} "
        f"± {prop['gain']['spread']:.4f})"
    )
    for name in OUTPUTS:
        say(f"  {name:<18} {p.out / name}")
    return 0
