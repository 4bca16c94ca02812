"""The recipe: one typed object, loaded from YAML, that flows from the CLI to every stage.

Each component owns its section (`SourceConfig`, `DedupeConfig`, `TokenizerConfig`, `MixConfig`) and
validates it in `__post_init__`, naming the field and the fix. A recipe may `extends:` another file; the
child's keys are merged over the parent's (lists replace, mappings merge; `sources` merge by `name`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe value that cannot work; the message names the field and the fix."""


def _fail(where: str, message: str) -> None:
    raise RecipeError(f"recipe field `{where}`: {message}")


@dataclass(kw_only=True, slots=True)
class SourceConfig:
    name: str
    kind: str  # "jsonl" (SlimPajama layout) or "parquet" (StarCoderData layout)
    root: str  # fsspec URL or local path; relative paths resolve against the recipe file's folder
    train: list[str]  # glob patterns under root
    validation: list[str] = field(default_factory=list)
    validation_fraction: float = 0.0  # used when `validation` is empty: a hash-chosen share of documents
    text_field: str = "text"  # JSONL key or parquet column
    subset_field: str = ""  # dotted JSONL key (e.g. meta.redpajama_set_name); empty: first folder of the path
    include_subsets: list[str] = field(default_factory=list)  # empty: all
    exclude_subsets: list[str] = field(default_factory=list)
    weight: float = 1.0
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_document_bytes: int = 10_000_000  # larger documents are quarantined as oversized_document

    def __post_init__(self) -> None:
        where = f"sources[{self.name}]"
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            _fail(f"{where}.name", "use letters, digits, '-' and '_'")
        if self.kind not in ("jsonl", "parquet"):
            _fail(f"{where}.kind", f"{self.kind!r} is not a source kind; use 'jsonl' (SlimPajama layout) or 'parquet' (StarCoderData layout)")
        if not self.root:
            _fail(f"{where}.root", "give the folder or URL that holds the source's files")
        if not self.train:
            _fail(f"{where}.train", "give at least one glob pattern of training files")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight > 0:
            _fail(f"{where}.weight", f"{self.weight!r} is not a positive number; weights are the target token ratio, e.g. 7 and 3")
        if not 0.0 <= self.validation_fraction < 1.0:
            _fail(f"{where}.validation_fraction", f"{self.validation_fraction} is outside [0, 1)")
        if self.validation and self.validation_fraction:
            _fail(f"{where}.validation_fraction", "set either `validation` patterns or `validation_fraction`, not both")
        if self.max_document_bytes <= 0:
            _fail(f"{where}.max_document_bytes", "must be positive")


@dataclass(kw_only=True, slots=True)
class MinHashConfig:
    enabled: bool = True
    ngram: int = 13  # character n-grams of the normalized text (SlimPajama)
    bands: int = 9
    rows: int = 13
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("ngram", "bands", "rows"):
            if getattr(self, name) < 1:
                _fail(f"dedupe.minhash.{name}", "must be at least 1")

    @property
    def permutations(self) -> int:
        return self.bands * self.rows


@dataclass(kw_only=True, slots=True)
class DedupeConfig:
    exact: bool = True
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    partitions: int = 8  # band keys are split into this many partitions, one task each

    def __post_init__(self) -> None:
        if self.partitions < 1:
            _fail("dedupe.partitions", "must be at least 1")


@dataclass(kw_only=True, slots=True)
class TokenizerTrainConfig:
    vocab_size: int = 32000
    model_type: str = "bpe"
    sample_documents: int = 200_000

    def __post_init__(self) -> None:
        if self.vocab_size < 100:
            _fail("tokenizer.train.vocab_size", "must be at least 100")


@dataclass(kw_only=True, slots=True)
class TokenizerConfig:
    model: str = ""  # path / fsspec URL of a sentencepiece .model, or pkg://package/path/in/package
    add_bos: bool = False
    add_eos: bool = True
    train: TokenizerTrainConfig | None = None  # train a model from the build's own text instead

    def __post_init__(self) -> None:
        if not self.model and self.train is None:
            _fail("tokenizer.model", "give a sentencepiece .model path (e.g. Llama-2's tokenizer.model) or a `train:` section")


MIX_POLICIES = ("natural", "downsample", "upsample")


@dataclass(kw_only=True, slots=True)
class MixConfig:
    policy: str = "natural"
    shard_tokens: int = 50_000_000  # tokens per shard (the last shard of a split holds the rest)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.policy not in MIX_POLICIES:
            _fail("mix.policy", f"{self.policy!r} is not one of {', '.join(MIX_POLICIES)}")
        if self.shard_tokens < 1:
            _fail("mix.shard_tokens", "must be positive")


@dataclass(kw_only=True, slots=True)
class Recipe:
    name: str
    sources: list[SourceConfig]
    tokenizer: TokenizerConfig
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    batch_documents: int = 1024  # documents per batch inside a task

    def __post_init__(self) -> None:
        if not self.sources:
            _fail("sources", "list at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            _fail("sources", f"source names must be unique, got {names}")
        if self.batch_documents < 1:
            _fail("batch_documents", "must be positive")

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(x, dict) and "name" in x for x in base + over):
        merged = {x["name"]: x for x in base}
        for x in over:
            merged[x["name"]] = _merge(merged[x["name"]], x) if x["name"] in merged else x
        return list(merged.values())
    return over


def read_recipe_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise RecipeError(f"{path}: `extends` loops back to itself")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent:
        base = read_recipe_yaml((path.parent / parent).resolve(), seen + (path,))
        data = _merge(base, data)
    for src in data.get("sources", []) or []:
        root = src.get("root", "")
        if isinstance(root, str) and root and "://" not in root and not Path(root).is_absolute():
            src["root"] = str((path.parent / root).resolve())
    tok = data.get("tokenizer") or {}
    model = tok.get("model", "")
    if isinstance(model, str) and model and "://" not in model and not Path(model).is_absolute():
        tok["model"] = str((path.parent / model).resolve())
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe field `{where}`: expected a mapping, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"recipe field `{where}.{unknown[0]}` is not a known setting; known: {', '.join(known)}")
    kwargs = {}
    for key, value in data.items():
        nested = {"minhash": MinHashConfig, "train": TokenizerTrainConfig if cls is TokenizerConfig else None}.get(key)
        if nested is not None and value is not None:
            value = _build(nested, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RecipeError(f"recipe section `{where}`: {e}") from None


def recipe_from_dict(data: dict) -> Recipe:
    data = dict(data)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise RecipeError(f"recipe field `{unknown[0]}` is not a known setting")
    if not isinstance(data.get("sources"), list):
        raise RecipeError("recipe field `sources`: give a list of sources")
    sources = [_build(SourceConfig, s, f"sources[{i}]") for i, s in enumerate(data["sources"])]
    return Recipe(
        name=data.get("name") or "unnamed",
        sources=sources,
        tokenizer=_build(TokenizerConfig, data.get("tokenizer") or {}, "tokenizer"),
        dedupe=_build(DedupeConfig, data.get("dedupe") or {}, "dedupe"),
        mix=_build(MixConfig, data.get("mix") or {}, "mix"),
        batch_documents=data.get("batch_documents", 1024),
    )


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    data = read_recipe_yaml(Path(path).resolve())
    if overrides:
        data = _merge(data, overrides)
    return recipe_from_dict(data)
