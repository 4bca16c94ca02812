"""The build's tokenizer: the recipe's sentencepiece model, or one trained on the build's own filtered text."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec

from manifests.outputs import TOKENIZER_MODEL
from pipeline.build.inputs import InputFile
from pipeline.build.recipe import Recipe, RecipeError
from pipeline.work.store import Store
from stages.document import DocBatch
from stages.fetch import read_documents
from stages.filter import apply_filters, build_filters
from stages.tokenize import Tokenizer, TokenizerError, read_model_bytes, train_model


def recipe_tokenizer(recipe: Recipe) -> Tokenizer | None:
    """The recipe's own sentencepiece model, or None when the recipe trains one. A build reads it before it
    lists any input, so a wrong path is refused before a long remote listing."""
    cfg = recipe.tokenizer
    if cfg.train is not None:
        return None
    try:
        return Tokenizer.from_bytes(read_model_bytes(cfg.model), cfg.add_bos, cfg.add_eos)
    except TokenizerError as e:
        raise RecipeError(f"recipe field `tokenizer.model`: {e}") from None


def open_tokenizer(recipe: Recipe, inputs: list[InputFile], out: Store) -> Tokenizer:
    """The recipe's model, or the one trained on `inputs` (once per output: re-used from OUT/tokenizer.model)."""
    tokenizer = recipe_tokenizer(recipe)
    if tokenizer is not None:
        return tokenizer
    cfg = recipe.tokenizer
    if out.exists(TOKENIZER_MODEL):  # trained by an earlier run of this build
        return Tokenizer.from_bytes(out.read_bytes(TOKENIZER_MODEL), cfg.add_bos, cfg.add_eos)
    model = train_model(
        _training_texts(inputs, recipe), cfg.train.vocab_size, cfg.train.model_type, cfg.train.sample_documents
    )
    out.write_bytes(TOKENIZER_MODEL, model)
    return Tokenizer.from_bytes(model, cfg.add_bos, cfg.add_eos)


def _training_texts(inputs: list[InputFile], recipe: Recipe) -> Iterator[str]:
    """The first `sample_documents` documents that pass the filters, in canonical order (deterministic)."""
    left = recipe.tokenizer.train.sample_documents
    filters = {s.name: build_filters(s) for s in recipe.sources}
    for task in inputs:
        fs, path = fsspec.core.url_to_fs(task.url)
        for item in read_documents(fs, path, task.rel_path, task.source, recipe.batch_documents):
            if isinstance(item, DocBatch):
                kept, _ = apply_filters(item, filters[task.source.name])
                yield from kept.texts[:left]
                left -= min(left, len(kept))
            if left <= 0:
                return
