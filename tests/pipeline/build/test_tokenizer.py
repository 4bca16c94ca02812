"""pipeline/build/tokenizer.py: the recipe's sentencepiece model as it is, or one trained on the build's own filtered
text, written beside the manifest and re-used by the next run of the build."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.outputs import TOKENIZER_MODEL
from pipeline.build import tokenizer as build_tokenizer
from pipeline.build.inputs import list_inputs
from pipeline.build.recipe import load_recipe
from pipeline.sample_corpus import sample_sources
from pipeline.work.store import Store
from stages.tokenize import read_model_bytes

RECIPE = Path(__file__).resolve().parents[3] / "manifests" / "recipes" / "sample.yaml"


def sample_recipe(corpus: Path, **overrides):
    return load_recipe(RECIPE, overrides={"sources": sample_sources(corpus), **overrides})


def test_the_recipes_model_is_used_as_it_is_and_nothing_is_written(sample_corpus, tmp_path):
    recipe = sample_recipe(sample_corpus)
    tokenizer = build_tokenizer.open_tokenizer(recipe, list_inputs(recipe), Store.at(str(tmp_path)))
    assert tokenizer.model_bytes == read_model_bytes(recipe.tokenizer.model)
    assert (tokenizer.add_bos, tokenizer.add_eos) == (recipe.tokenizer.add_bos, recipe.tokenizer.add_eos)
    assert not list(tmp_path.iterdir())


def test_a_trained_tokenizer_learns_from_filtered_text_once_and_is_reused(sample_corpus, tmp_path, monkeypatch):
    # sentencepiece refuses 100 sample documents or fewer (its input_sentence_size must exceed 100)
    recipe = sample_recipe(sample_corpus, tokenizer={"train": {"vocab_size": 400, "sample_documents": 200}})
    inputs, out = list_inputs(recipe), Store.at(str(tmp_path))
    texts = list(build_tokenizer._training_texts(inputs, recipe))
    assert len(texts) == 200 and min(map(len, texts)) >= 200  # the recipe drops documents under 200 characters

    trained = build_tokenizer.open_tokenizer(recipe, inputs, out)
    assert trained.vocab_size == 400
    assert (tmp_path / TOKENIZER_MODEL).read_bytes() == trained.model_bytes

    def train_again(*args, **kwargs):
        raise AssertionError("the model beside the manifest must be re-used, not trained again")

    monkeypatch.setattr(build_tokenizer, "train_model", train_again)
    assert build_tokenizer.open_tokenizer(recipe, inputs, out).model_bytes == trained.model_bytes


def test_a_model_that_cannot_be_read_names_the_recipe_field(sample_corpus, tmp_path):
    recipe = sample_recipe(sample_corpus, tokenizer={"model": str(tmp_path / "missing.model")})
    with pytest.raises(build_tokenizer.RecipeError, match="tokenizer.model"):
        build_tokenizer.open_tokenizer(recipe, list_inputs(recipe), Store.at(str(tmp_path)))
