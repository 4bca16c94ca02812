from pathlib import Path

import pytest
import yaml

from pipeline.build.recipe import RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[3] / "manifests" / "recipes"


def test_shipped_recipes_load():
    tiny = load_recipe(RECIPES / "tinyllama.yaml")
    assert [s.name for s in tiny.sources] == ["slimpajama", "starcoderdata"]
    assert tiny.source("slimpajama").exclude_subsets == ["RedPajamaGithub"]
    assert (tiny.dedupe.minhash.bands, tiny.dedupe.minhash.rows, tiny.dedupe.minhash.ngram) == (9, 13, 13)
    sample = load_recipe(RECIPES / "sample.yaml")
    assert sample.source("slimpajama").exclude_subsets == ["RedPajamaGithub"]  # inherited through `extends`
    assert sample.source("starcoderdata").train == ["python/*.parquet"]
    assert sample.tokenizer.model.startswith("pkg://")
    quality = load_recipe(RECIPES / "web-quality.yaml")
    assert set(quality.source("slimpajama").filters) >= {"gopher_repetition", "gopher_quality", "c4", "fineweb"}
    assert sample.sha256() != quality.sha256()


def _write(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {
    "name": "t",
    "sources": [{"name": "a", "kind": "jsonl", "root": "/data", "train": ["*.jsonl"], "weight": 1}],
    "tokenizer": {"model": "/m.model"},
}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"sources": [{**BASE["sources"][0], "weight": -1}]}, "sources[a].weight"),
        ({"sources": [{**BASE["sources"][0], "weight": 0}]}, "sources[a].weight"),
        ({"sources": [{**BASE["sources"][0], "weight": "seven"}]}, "sources[a].weight"),
        ({"sources": [{**BASE["sources"][0], "kind": "csv"}]}, "sources[a].kind"),
        ({"sources": [{**BASE["sources"][0], "colour": "red"}]}, "sources[a].colour"),
        ({"sources": [{**BASE["sources"][0], "weight": float("inf")}]}, "sources[a].weight"),
        ({"sources": [{**BASE["sources"][0], "weight": True}]}, "sources[a].weight"),
        ({"sources": [{**BASE["sources"][0], "train": "*.jsonl"}]}, "sources[a].train"),
        ({"sources": {"a": BASE["sources"][0]}}, "sources"),
        ({"tokenizer": {"model": "/m.model", "add_eos": "no"}}, "tokenizer.add_eos"),
        ({"mix": {"shard_tokens": "1.5e5"}}, "mix.shard_tokens"),
        ({"dedupe": {"partitions": "four"}}, "dedupe.partitions"),
        ({"dedupe": {"minhash": "yes"}}, "dedupe.minhash"),
        ({"sources": []}, "sources"),
        ({"tokenizer": {}}, "tokenizer.model"),
        ({"mix": {"policy": "random"}}, "mix.policy"),
        ({"dedupe": {"partitions": 0}}, "dedupe.partitions"),
        ({"dedupe": {"minhash": {"bands": 0}}}, "dedupe.minhash.bands"),
    ],
)
def test_bad_values_are_refused_naming_the_field(tmp_path, change, field):
    with pytest.raises(RecipeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(_write(tmp_path, {**BASE, **change}))


def test_relative_roots_resolve_against_the_recipe_file(tmp_path):
    recipe = load_recipe(_write(tmp_path, {**BASE, "sources": [{**BASE["sources"][0], "root": "corpus"}]}))
    assert recipe.sources[0].root == str(tmp_path / "corpus")


def test_extends_merges_sources_by_name(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "sources": [{"name": "a", "weight": 5}]}))
    recipe = load_recipe(child)
    assert recipe.sources[0].weight == 5 and recipe.sources[0].train == ["*.jsonl"]


def test_a_packaged_recipe_is_found_by_name_and_reads_as_if_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample = load_recipe("sample")
    assert [s.root for s in sample.sources] == [
        str(tmp_path / "data/sample/SlimPajama-627B"),
        str(tmp_path / "data/sample/starcoderdata"),
    ]
    assert sample.mix == load_recipe(RECIPES / "sample.yaml").mix  # the same file as the checkout's
    with pytest.raises(RecipeError, match="no packaged recipe of that name; packaged: sample, tinyllama, web-quality"):
        load_recipe("sampel")
