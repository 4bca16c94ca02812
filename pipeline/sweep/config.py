"""SWEEP.yaml: what a mixture sweep trains and optimises, loaded into typed sections and checked before any work.

    recipe: base.yaml           # the base recipe (its domains, or its sources, and their weights: the base mix)
    work: runs/base/work        # the work store a build of that recipe filled (no re-processing)
    out: runs/sweep             # optional; `--out` wins
    domains: [...]              # optional: the recipe's `domains:` entries to sweep over instead of the recipe's own
    mixtures: {count: 16, draw: dirichlet, concentration: 1.0, seed: 0}   # or draw: list + weights: [{a: 1, b: 2}, ...]
    proxy: {budget_tokens: 50000000, preset: tiny, steps: 200, batch_tokens: 262144, ...}
    objective: {kind: mean}     # mean (over domains), weighted (+ weights: {a: 2, b: 1}), domain (+ domain: a)
    target: {tokens: 1.0e12, max_epochs: 4}   # the real run: a domain may take at most max_epochs x its tokens

Relative paths resolve against the sweep file's folder. Every section is a `@dataclass(kw_only=True, slots=True)`
validated in `__post_init__`; a wrong value is refused with the field's name (`SweepError`, one line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests.config import ConfigError
from pipeline.build.recipe import RecipeError, _build, read_recipe_yaml, read_yaml_mapping, recipe_from_dict

DRAWS = ("dirichlet", "list")
OBJECTIVES = ("mean", "weighted", "domain")


class SweepError(ValueError):
    """A sweep that cannot run; the message names the field or the missing piece and the fix."""


@dataclass(kw_only=True, slots=True)
class MixturesConfig:
    count: int = 16  # mixtures in all, the base mix first
    draw: str = "dirichlet"  # around the base mix (RegMix), or `list`: the `weights` given
    concentration: float = 1.0  # Dirichlet alpha = concentration x domains x base share: lower spreads wider
    seed: int = 0
    weights: list[dict[str, float]] = field(default_factory=list)  # draw: list

    def __post_init__(self) -> None:
        if self.draw not in DRAWS:
            raise ConfigError("draw", f"{self.draw!r} is not one of {', '.join(DRAWS)}")
        if self.draw == "dirichlet" and self.count < 3:
            raise ConfigError("count", "give at least 3 mixtures (a fit needs more proxies than one)")
        if not self.concentration > 0:
            raise ConfigError("concentration", "must be positive")
        if self.draw == "list" and len(self.weights) < 3:
            raise ConfigError("weights", "list at least 3 mixtures, e.g. [{a: 1, b: 1}, {a: 3, b: 1}, {a: 1, b: 3}]")


@dataclass(kw_only=True, slots=True)
class ProxyConfig:
    budget_tokens: int  # train tokens of each proxy corpus
    preset: str = "tiny"
    steps: int = 100
    batch_tokens: int | None = None  # default: the preset's
    micro_batch: int = 8
    lr: float = 4e-4
    min_lr: float | None = None  # default: lr / 10
    warmup_steps: int | None = None
    eval_windows: int = 512
    seed: int = 1234
    nproc: int = 1  # processes per proxy (GPUs where the cluster has them)
    threads: int = 1  # CPU threads per proxy process on a CPU cluster

    def __post_init__(self) -> None:
        for name in ("budget_tokens", "steps", "micro_batch", "eval_windows", "nproc", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if not self.lr > 0:
            raise ConfigError("lr", "must be positive")

    def train_args(self) -> list[str]:
        """`tokenmill train` options of every proxy (the manifest, --out and --nproc apart)."""
        args = {
            "preset": self.preset,
            "steps": self.steps,
            "micro-batch": self.micro_batch,
            "lr": self.lr,
            "min-lr": self.min_lr if self.min_lr is not None else self.lr / 10,
            "seed": self.seed,
            "eval-every": self.steps,
            "eval-windows": self.eval_windows,
            "save-every": 0,
            "log-every": self.steps,
        }
        if self.batch_tokens is not None:
            args["batch-tokens"] = self.batch_tokens
        if self.warmup_steps is not None:
            args["warmup-steps"] = self.warmup_steps
        return [part for k, v in args.items() for part in (f"--{k}", str(v))] + ["--no-compile"]


@dataclass(kw_only=True, slots=True)
class ObjectiveConfig:
    kind: str = "mean"
    weights: dict[str, float] = field(default_factory=dict)  # kind: weighted
    domain: str = ""  # kind: domain

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ConfigError("kind", f"{self.kind!r} is not one of {', '.join(OBJECTIVES)}")
        if self.kind == "weighted" and not (
            self.weights and sum(self.weights.values()) > 0 and min(self.weights.values()) >= 0
        ):
            raise ConfigError(
                "weights", "give each domain's weight in the objective (>= 0, summing to something positive)"
            )
        if self.kind == "domain" and not self.domain:
            raise ConfigError("domain", "name the domain whose validation loss to minimise")

    def coefficients(self, domains: list[str]) -> list[float]:
        """The objective as weights over `domains`' validation losses (summing to 1)."""
        raw = {"mean": {d: 1.0 for d in domains}, "weighted": self.weights, "domain": {self.domain: 1.0}}[self.kind]
        total = sum(raw.values())
        return [raw.get(d, 0.0) / total for d in domains]


@dataclass(kw_only=True, slots=True)
class TargetConfig:
    tokens: float = 0.0  # the real run's training tokens; 0: one pass over the base corpus's train tokens
    max_epochs: float = 4.0  # repeated data stays almost as good as new up to ~4 epochs (Muennighoff et al. 2023)

    def __post_init__(self) -> None:
        if self.tokens < 0 or not math.isfinite(self.tokens):
            raise ConfigError("tokens", "must be a number of tokens >= 0")
        if not self.max_epochs > 0:
            raise ConfigError("max_epochs", "must be positive")


@dataclass(kw_only=True, slots=True)
class Sweep:
    path: Path  # the sweep file
    recipe_path: Path
    recipe_data: dict  # the base recipe with `extends` merged and paths absolute, the sweep's domains in
    work: str
    out: str | None
    mixtures: MixturesConfig
    proxy: ProxyConfig
    objective: ObjectiveConfig
    target: TargetConfig


_SECTIONS = {"mixtures": MixturesConfig, "proxy": ProxyConfig, "objective": ObjectiveConfig, "target": TargetConfig}
_KNOWN = ("recipe", "work", "out", "domains", *_SECTIONS)


def _path(value: Any, folder: Path, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SweepError(f"sweep field `{name}`: give a path or URL")
    return value if "://" in value or Path(value).is_absolute() else str((folder / value).resolve())


def load_sweep(path: str | Path) -> Sweep:
    """The sweep file, its base recipe and its sections, each checked; raises SweepError (or RecipeError)."""
    path = Path(path).resolve()
    data = read_yaml_mapping(path, "sweep", SweepError)
    unknown = sorted(set(data) - set(_KNOWN))
    if unknown:
        raise SweepError(f"sweep field `{unknown[0]}` is not a known setting; known: {', '.join(_KNOWN)}")
    for name in ("recipe", "work", "proxy"):
        if name not in data:
            raise SweepError(f"sweep field `{name}` is missing; give it")
    recipe_path = Path(_path(data["recipe"], path.parent, "recipe"))
    recipe_data = read_recipe_yaml(recipe_path)
    if data.get("domains") is not None:
        recipe_data["domains"] = data["domains"]
    recipe_from_dict(recipe_data)  # a bad recipe or domain is refused here, naming its field
    sections = {}
    for name, cls in _SECTIONS.items():
        try:
            sections[name] = _build(cls, data.get(name) or {}, name)
        except RecipeError as e:
            raise SweepError(str(e).replace("recipe field", "sweep field")) from None
    return Sweep(
        path=path,
        recipe_path=recipe_path,
        recipe_data=recipe_data,
        work=_path(data["work"], path.parent, "work"),
        out=_path(data["out"], path.parent, "out") if data.get("out") else None,
        **sections,
    )
