"""The recipe: the stages' own configs composed into one object, loaded from YAML.

Each stage owns its section's config next to its code (`stages.fetch.SourceConfig`, `stages.dedupe.DedupeConfig`,
`stages.tokenize.TokenizerConfig`, `stages.mix.MixConfig`) and validates it in `__post_init__`; this module
checks every value's type against the field's declaration first, and turns a stage's `ConfigError` into
"recipe field `section.field`: ...; fix". A recipe may `extends:` another file; the child's keys are merged
over the parent's (lists replace, mappings merge; `sources` merge by `name`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from manifests.config import ConfigError
from stages.decontaminate import DecontaminateConfig, EvalSetConfig
from stages.dedupe import DedupeConfig
from stages.fetch import SourceConfig
from stages.filter import build_filters
from stages.minhash import MinHashConfig
from stages.mix import Domain, DomainConfig, MixConfig, resolve_domains
from stages.tokenize import TokenizerConfig, TokenizerTrainConfig


class RecipeError(ValueError):
    """A recipe value that cannot work; the message names the field and the fix."""


def _fail(where: str, message: str) -> None:
    raise RecipeError(f"recipe field `{where}`: {message}")


@dataclass(kw_only=True, slots=True)
class Recipe:
    name: str
    sources: list[SourceConfig]
    tokenizer: TokenizerConfig
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    decontaminate: DecontaminateConfig | None = None  # eval sets whose items must not be in the shards
    batch_documents: int = 1024  # documents per batch inside a task
    domains: list[DomainConfig] = field(default_factory=list)  # empty: one domain per source, the source weights

    def __post_init__(self) -> None:
        if not self.sources:
            _fail("sources", "list at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            _fail("sources", f"source names must be unique, got {names}")
        if self.batch_documents < 1:
            _fail("batch_documents", "must be positive")
        try:
            self.domain_list()
        except ConfigError as e:
            _fail(f"domains[{e.field}]" if e.field != "domains" else "domains", e.message)

    def domain_list(self) -> list[Domain]:
        """The mix's streams: the domains, or one per source (`stages.mix.resolve_domains`)."""
        return resolve_domains([(s.name, s.weight) for s in self.sources], self.domains)

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The recipe as the manifest records it. Settings added later are left out at their defaults, so a recipe
        that does not use them has the hash and the manifest it had before they existed."""
        data = dataclasses.asdict(self)
        if self.decontaminate is None:  # a recipe without the section hashes as it did before the section existed
            del data["decontaminate"]
        if not self.domains:
            del data["domains"]
        if not self.mix.budget_tokens:
            del data["mix"]["budget_tokens"]
        return data

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(over, list)
        and all(isinstance(x, dict) and "name" in x for x in base + over)
    ):
        merged = {x["name"]: x for x in base}
        for x in over:
            merged[x["name"]] = _merge(merged[x["name"]], x) if x["name"] in merged else x
        return list(merged.values())
    return over


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (`manifests/recipes/NAME.yaml`)."""
    return sorted(p.name.removesuffix(".yaml") for p in _packaged_dir().iterdir() if p.name.endswith(".yaml"))


def _packaged_dir() -> Path:
    return Path(str(importlib.resources.files("manifests") / "recipes"))


def locate_recipe(arg: str | Path) -> tuple[Path, Path | None]:
    """(recipe file, folder its relative paths resolve against). A path names a file, whose relative paths
    resolve against its own folder (None: each file's own). A bare name such as `sample` names a recipe shipped
    in the package, found from any installed copy (a wheel too); it reads as if it sat in `manifests/recipes/`
    of the working directory, as it does in a checkout: `sample`'s `../../data/sample` is `./data/sample`, where
    `tokenmill sample data/sample` writes the demo corpus."""
    text = str(arg)
    if "/" in text or text.endswith((".yaml", ".yml")) or Path(text).exists():
        return Path(text).resolve(), None
    packaged = _packaged_dir() / f"{text}.yaml"
    if not packaged.is_file():
        raise RecipeError(
            f"recipe {text!r}: no such file, and no packaged recipe of that name; packaged: "
            f"{', '.join(packaged_recipes())}"
        )
    return packaged, Path.cwd() / "manifests" / "recipes"


def _resolved(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
        return str((folder / value).resolve())
    return value


def read_yaml_mapping(path: Path, kind: str, error: type[ValueError]) -> dict:
    """The mapping a YAML file of settings holds (`kind` names the file in messages: recipe, sweep); otherwise
    `error` with one line naming the file, and for a syntax error its line and column."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{kind} file {path} does not exist") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise error(f"{path}{where}: not valid YAML ({problem}); fix the {kind} file there") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {kind} is a YAML mapping of settings, got {type(data).__name__}")
    return data


def read_recipe_yaml(path: Path, seen: tuple[Path, ...] = (), relative_to: Path | None = None) -> dict:
    """The recipe at `path` with its `extends` chain merged in and relative roots and tokenizer paths made
    absolute against `relative_to` (default: the folder of the file that names them)."""
    if path in seen:
        raise RecipeError(f"{path}: `extends` loops back to itself")
    data = read_yaml_mapping(path, "recipe", RecipeError)
    parent = data.pop("extends", None)
    if parent:
        parent_path = (path.parent / str(parent)).resolve()
        if not parent_path.is_file():
            raise RecipeError(
                f"{path}: `extends: {parent}` names {parent_path}, which does not exist; fix the path (relative to "
                "the recipe's folder), or start from a self-contained copy: tokenmill recipe copy NAME FILE"
            )
        base = read_recipe_yaml(parent_path, seen + (path,), relative_to)
        data = _merge(base, data)
    folder = relative_to or path.parent
    sources = data.get("sources")
    for src in sources if isinstance(sources, list) else []:  # anything else is refused, naming the field, later
        if isinstance(src, dict) and "root" in src:
            src["root"] = _resolved(src["root"], folder)
    tok = data.get("tokenizer")
    if isinstance(tok, dict) and "model" in tok:
        tok["model"] = _resolved(tok["model"], folder)
    decontaminate = data.get("decontaminate")
    sets = decontaminate.get("sets") if isinstance(decontaminate, dict) else None
    for eval_set in sets if isinstance(sets, list) else []:
        if isinstance(eval_set, dict) and isinstance(eval_set.get("files"), list):
            eval_set["files"] = [_resolved(f, folder) for f in eval_set["files"]]
    return data


_NESTED = {MinHashConfig, TokenizerTrainConfig}


def _type_problem(value: Any, declared: Any) -> str | None:
    """What is wrong with `value` for a field declared as `declared`, or None. YAML gives str, int, float, bool,
    list, dict and None; a bool is not a number here, and a number must be finite."""
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return None if any(_type_problem(value, a) is None for a in args) else f"{value!r} is not {_describe(declared)}"
    if declared is type(None):
        return None if value is None else "not empty"
    if declared in _NESTED:
        return None if isinstance(value, dict) else f"give a mapping of settings, got {value!r}"
    if declared is bool:
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if declared in (int, float):
        ok = isinstance(value, int) or (declared is float and isinstance(value, float))
        if isinstance(value, bool) or not ok:
            return f"{value!r} is not {_describe(declared)}"
        return None if math.isfinite(value) else f"{value!r} is not a finite number"
    if declared is str:
        return None if isinstance(value, str) else f"{value!r} is not a string; quote it"
    if origin is list:
        if not isinstance(value, list):
            return (
                f"{value!r} is not a list; write it as [{value!r}]"
                if isinstance(value, str)
                else f"{value!r} is not a list"
            )
        return next((p for p in (_type_problem(v, args[0]) for v in value) if p), None) if args else None
    if origin is dict:
        return None if isinstance(value, dict) else f"{value!r} is not a mapping"
    return None


def _describe(declared: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "empty"}
    args = typing.get_args(declared)
    return (
        " or ".join(_describe(a) for a in args)
        if args
        else names.get(declared, getattr(declared, "__name__", str(declared)))
    )


def _build(cls: type, data: Any, where: str) -> Any:
    """A stage config from its recipe section: unknown keys and wrong types refused by the field's declaration,
    then the config's own checks, each naming `where.field`."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe field `{where}`: expected a mapping of settings, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"recipe field `{where}.{unknown[0]}` is not a known setting; known: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        problem = _type_problem(value, hints[key])
        if problem:
            raise RecipeError(f"recipe field `{where}.{key}`: {problem}")
        nested = (
            hints[key]
            if hints[key] in _NESTED
            else next((a for a in typing.get_args(hints[key]) if a in _NESTED), None)
        )
        kwargs[key] = _build(nested, value, f"{where}.{key}") if nested is not None and value is not None else value
    missing = [
        f.name
        for f in known.values()
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"recipe field `{where}.{missing[0]}` is missing; give it")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise RecipeError(f"recipe field `{where}.{e.field}`: {e.message}") from None


def validate_filters(recipe: Recipe) -> None:
    """Builds every source's filters once (datatrove's need seconds to import), so a bad filter setting is
    refused before any work starts."""
    for source in recipe.sources:
        try:
            build_filters(source)
        except ConfigError as e:
            raise RecipeError(f"recipe field `sources[{source.name}].{e.field}`: {e.message}") from None


def _source_label(data: Any, position: int) -> str:
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else str(position)


def recipe_from_dict(data: dict) -> Recipe:
    data = dict(data)
    known = [f.name for f in dataclasses.fields(Recipe)] + ["extends"]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"recipe field `{unknown[0]}` is not a known setting; known: {', '.join(known)}")
    if data.get("name") is None:  # `name:` left empty reads as the default
        data.pop("name", None)
    hints = typing.get_type_hints(Recipe)
    for key in ("name", "batch_documents"):
        problem = _type_problem(data[key], hints[key]) if key in data else None
        if problem:
            raise RecipeError(f"recipe field `{key}`: {problem}")
    if not isinstance(data.get("sources"), list):
        raise RecipeError("recipe field `sources`: give a list of sources (`- name: ...` entries), not a mapping")
    sources = [_build(SourceConfig, s, f"sources[{_source_label(s, i)}]") for i, s in enumerate(data["sources"])]
    return Recipe(
        name=data.get("name") or "unnamed",
        sources=sources,
        tokenizer=_build(TokenizerConfig, data.get("tokenizer") or {}, "tokenizer"),
        dedupe=_build(DedupeConfig, data.get("dedupe") or {}, "dedupe"),
        mix=_build(MixConfig, data.get("mix") or {}, "mix"),
        decontaminate=_decontaminate(data.get("decontaminate")),
        batch_documents=data.get("batch_documents", 1024),
        domains=_domains(data.get("domains")),
    )


def _domains(data: Any) -> list[DomainConfig]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise RecipeError(
            "recipe field `domains`: give a list of domains (`- {name: ..., source: ..., subsets: [...], weight: ...}`)"
        )
    return [_build(DomainConfig, d, f"domains[{_source_label(d, i)}]") for i, d in enumerate(data)]


def _decontaminate(data: Any) -> DecontaminateConfig | None:
    """The `decontaminate:` section: its eval sets first (each named in an error), then the section's own rule."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe field `decontaminate`: expected a mapping (sets: [...], ngram: 13), got {data!r}")
    sets = data.get("sets")
    if not isinstance(sets, list):
        raise RecipeError(
            "recipe field `decontaminate.sets`: give a list of eval sets (`- name:, files: [], fields: []`)"
        )
    built = [_build(EvalSetConfig, s, f"decontaminate.sets[{_source_label(s, i)}]") for i, s in enumerate(sets)]
    return _build(DecontaminateConfig, {**data, "sets": built}, "decontaminate")


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """A recipe from a YAML file or a packaged recipe's name (`locate_recipe`), with `overrides` merged over it."""
    file, relative_to = locate_recipe(path)
    data = read_recipe_yaml(file, relative_to=relative_to)
    if overrides:
        data = _merge(data, overrides)
    return recipe_from_dict(data)
