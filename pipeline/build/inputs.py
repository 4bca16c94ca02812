"""The build's input files: one listing pass per source pattern, in the canonical order, each with its identity."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec

from pipeline.build.recipe import Recipe, RecipeError
from stages.document import BadRecord, DocBatch
from stages.extras import missing_for_url
from stages.fetch import SourceConfig, read_documents

SPLITS = ("train", "validation")


@dataclass(kw_only=True, frozen=True, slots=True)
class InputFile:
    file_index: int  # position in the canonical order: the high half of its documents' keys (`manifests.keys`)
    source: SourceConfig
    url: str  # fsspec URL of the file
    rel_path: str  # relative to the source root
    split: str  # "train" or "validation" (a source with `validation_fraction` splits "train" files per document)
    size: int  # bytes, from the listing
    version: str  # the store's etag, else its modification time: a rewritten file gets a new identity

    def identity(self) -> dict:
        """What this file is, independent of where it sits in the listing: its process output is keyed by it."""
        return {
            "source": self.source.name,
            "split": self.split,
            "path": self.rel_path,
            "size": self.size,
            "version": self.version,
        }

    def documents(self, batch_documents: int) -> Iterator[DocBatch | BadRecord]:
        """The file's documents in batches, and its bad records (`stages.fetch.read_documents`), from any store."""
        fs, path = fsspec.core.url_to_fs(self.url)
        return read_documents(fs, path, self.rel_path, self.source, batch_documents)


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated", "created"):
        if info.get(key) is not None:
            return f"{key}:{info[key]}"
    return ""


def _list_source(source: SourceConfig, split: str, patterns: list[str]) -> list[tuple[str, str, dict]]:
    """(url, path relative to the root, listing info) of every file matching `patterns`, sorted by path. One
    glob with details per pattern: sizes and versions come with the listing, not one request per file."""
    try:
        fs, root = fsspec.core.url_to_fs(source.root)
    except (ImportError, ValueError) as e:
        why = missing_for_url(source.root) or str(e)
        raise RecipeError(
            f"recipe field `sources[{source.name}].root`: {source.root!r} cannot be opened: {why}"
        ) from None
    root = root.rstrip("/")
    found: dict[str, dict] = {}
    try:
        for pattern in patterns:
            found.update(
                {p: info for p, info in fs.glob(f"{root}/{pattern}", detail=True).items() if info.get("type") == "file"}
            )
    except Exception as e:  # host unreachable, access denied (each store raises its own kind): nothing can be built
        raise RecipeError(
            f"recipe field `sources[{source.name}].root`: {source.root!r} cannot be listed ({type(e).__name__}: {e}); "
            "check the address, the network and the credentials"
        ) from None
    if patterns and not found:
        raise RecipeError(
            f"recipe field `sources[{source.name}].{split}`: no file under {source.root!r} matches {patterns}; "
            + (_missing_root(source.root) or "check the root and the patterns")
        )
    return [(fs.unstrip_protocol(p), p[len(root) + 1 :], found[p]) for p in sorted(found)]


def _missing_root(root: str) -> str | None:
    """What to do about a local root that does not exist: the sample corpus's folders name the command that
    writes them."""
    if "://" in root or Path(root).exists():
        return None
    from pipeline.sample_corpus import SLIMPAJAMA_DIR, STARCODER_DIR

    if Path(root).name in (SLIMPAJAMA_DIR, STARCODER_DIR):
        corpus = Path(root).parent
        shown = corpus.relative_to(Path.cwd()) if corpus.is_relative_to(Path.cwd()) else corpus
        return f"the folder does not exist: `tokenmill sample --out {shown}` writes the sample corpus there"
    return "the folder does not exist; check the root (relative roots resolve against the recipe file's folder)"


def list_inputs(recipe: Recipe) -> list[InputFile]:
    """Every input file in the build's canonical order: validation files of all sources, then training files
    (so a document in both splits keeps its validation copy through dedupe). Refuses a source whose patterns
    match nothing, naming the field."""
    listed = {split: [] for split in SPLITS}
    for source in recipe.sources:
        listed["validation"] += [(source, *f) for f in _list_source(source, "validation", source.validation)]
        listed["train"] += [(source, *f) for f in _list_source(source, "train", source.train)]
    ordered = [(split, *item) for split in ("validation", "train") for item in listed[split]]
    return [
        InputFile(
            file_index=i,
            source=source,
            url=url,
            rel_path=rel,
            split=split,
            size=int(info.get("size") or 0),
            version=_version(info),
        )
        for i, (split, source, url, rel, info) in enumerate(ordered)
    ]
