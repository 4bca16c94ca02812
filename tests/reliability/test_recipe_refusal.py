"""Recipes with wrong values: `tokenmill build` refuses them before any work starts (no Ray, no work dir), exits 2
and names the field in one line, never a traceback."""

from __future__ import annotations

import socket
import subprocess

import pytest

from manifests.outputs import MANIFEST
from pipeline.sample_corpus import sample_recipe
from tests.support.faults import ROOT, tokenmill


def closed_port_url() -> str:
    """An http URL nothing listens on: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/SlimPajama-627B"


CASES = {
    "unknown source kind": ({"kind": "csv"}, {}, "sources[slimpajama].kind"),
    "negative weight": ({"weight": -7}, {}, "sources[slimpajama].weight"),
    "zero weight": ({"weight": 0}, {}, "sources[slimpajama].weight"),
    "no tokenizer": ({}, {"tokenizer": {"model": ""}}, "tokenizer.model"),
    "unreadable tokenizer": ({}, {"tokenizer": {"model": "/nonexistent/tokenizer.model"}}, "tokenizer.model"),
    "unknown URI protocol": ({"root": "nosuchprotocol://bucket/SlimPajama-627B"}, {}, "sources[slimpajama].root"),
    "unreachable input URI": ({"root": closed_port_url}, {}, "sources[slimpajama].root"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_recipe_value_is_refused_naming_the_field(case, sample_corpus, tmp_path):
    source_fields, sections, field = CASES[case]
    slimpajama = {"name": "slimpajama", "root": str(sample_corpus / "SlimPajama-627B")}
    slimpajama.update({k: v() if callable(v) else v for k, v in source_fields.items()})
    recipe = sample_recipe(
        sample_corpus,
        tmp_path,
        sources=[slimpajama, {"name": "starcoderdata", "root": str(sample_corpus / "starcoderdata")}],
        **sections,
    )
    done = subprocess.run(
        tokenmill("build", str(recipe), "--out", str(tmp_path / "out")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"recipe field `{field}`" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "work").exists() and not (tmp_path / "out" / MANIFEST).exists()
