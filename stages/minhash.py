"""MinHash signatures with SlimPajama's settings, computed by a numba kernel on Unicode code points.

SlimPajama's near-duplicate rule: normalize the text (`stages.normalize`: lowercase, delete
`string.punctuation`, collapse whitespace runs to one space, strip), take the character n-grams of the result (13-grams,
about one per
character) as the document's set, and compare sets with MinHash-LSH (9 bands x 13 rows, Jaccard ~0.8).
That banding misses 7% of the pairs at Jaccard 0.9 (P(candidate) = 1 - (1 - J^13)^9). tokenmill's own preset
("verified", the default) bands the first 96 values of a 256-value signature as 16 bands x 6 rows (misses
5e-4 at J = 0.85, 5e-6 at 0.9) and then verifies every removal by the signatures' estimated Jaccard against
its cluster's survivor (`threshold`, 0.78: see PRESETS); "slimpajama" keeps the 2023 setting, unverified.
Python lowercases (Unicode case mapping); the kernel does the rest on code points, because `str.translate`
falls to a slow per-character path as soon as a text holds one non-ASCII character (a curly quote).

Each shingle gets a 32-bit hash (FNV-1a over its code points, finished with MurmurHash3's fmix64, high 32
bits). The permutations are datasketch's "legacy" scheme bit for bit (the only scheme before datasketch
2.0, the one SlimPajama used): `a, b` drawn from `np.random.RandomState(seed)` exactly as
`datasketch.MinHash._init_permutations` draws them, `phv = ((hv * a + b) mod 2**64 mod (2**61 - 1)) & 0xffffffff`,
minimum over shingles. So a signature here equals `datasketch.MinHash(num_perm, seed=seed,
scheme="legacy", hashfunc=<shingle_hash>)` after `update_batch(<shingles>)`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numba import njit

from manifests.config import ConfigError
from manifests.hashing import GOLDEN_GAMMA
from stages.normalize import IS_PUNCTUATION, IS_SPACE

# numba promotes uint64 mixed with int64 to float64, so every constant the kernels touch is a uint64.
_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_LOW32 = np.uint64(0xFFFFFFFF)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_U33 = np.uint64(33)
_U32 = np.uint64(32)
_U61 = np.uint64(61)

# Shingles are hashed and permuted a block at a time so the block's hashes stay in L1 across the permutations.
_BLOCK = 2048


# Named settings: bands x rows for LSH, the signature's width (band keys use its first bands x rows values)
# and the verify threshold (0: no verification). "verified": with 256 permutations the estimate's standard
# deviation is sqrt(J(1-J)/256) = 0.022 at J 0.85 and 0.029 at J 0.7, so 0.78 is 3.1 of them below 0.85 (a true
# pair fails verification with P = 0.13%) and 2.8 above 0.7 (a J 0.7 document passes with P = 0.22%); with
# 16 x 6 banding the predicted recall at J >= 0.85 is >= 99.8% and a uniform mix of pairs over J 0.5-1.0 gives
# < 0.01% removals below J 0.7 (bench/dedupe_recall.py measures both). "slimpajama": SlimPajama's 2023 setting.
PRESETS = {
    "verified": {"bands": 16, "rows": 6, "permutations": 256, "threshold": 0.78},
    "slimpajama": {"bands": 9, "rows": 13, "permutations": None, "threshold": 0.0},  # permutations: bands x rows
}


@dataclass(kw_only=True, slots=True)
class MinHashConfig:
    """`preset` fills every setting left empty; a setting given explicitly wins over the preset's."""

    enabled: bool = True
    preset: str = "verified"
    ngram: int = 13  # character n-grams of the normalized text (SlimPajama)
    bands: int | None = None
    rows: int | None = None
    permutations: int | None = None  # the signature's width; band keys use its first bands x rows values
    threshold: float | None = (
        None  # verify: keep a removed document whose estimated Jaccard with its survivor is below this
    )
    seed: int = 1

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("preset", f"unknown preset {self.preset!r}; give one of {sorted(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.permutations is None:
            self.permutations = self.bands * self.rows
        for name in ("ngram", "bands", "rows"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.permutations < self.bands * self.rows:
            raise ConfigError(
                "permutations",
                f"{self.permutations} is fewer than bands x rows = {self.bands * self.rows}; give at least that many",
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("threshold", f"{self.threshold} is not between 0 (no verification) and 1")

    @property
    def verify(self) -> bool:
        """Whether removals are verified against their survivors (the process task then stores signatures)."""
        return self.enabled and self.threshold > 0


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(a, b)`, uint64 arrays of `num_perm`, drawn as datasketch's legacy `_init_permutations` draws them."""
    gen = np.random.RandomState(seed)
    ab = np.array(
        [
            (gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64))
            for _ in range(num_perm)
        ],
        dtype=np.uint64,
    ).T
    return np.ascontiguousarray(ab[0]), np.ascontiguousarray(ab[1])


@njit(cache=True, nogil=True, inline="always")
def _fmix64(h):
    h ^= h >> _U33
    h *= _FMIX_1
    h ^= h >> _U33
    h *= _FMIX_2
    h ^= h >> _U33
    return h


@njit(cache=True, nogil=True)
def _normalize(cps, start, end, is_punctuation, is_space, out):
    """Writes the normalized code points of the (lowercased) text cps[start:end] to `out`; returns their count.
    Punctuation is deleted before whitespace runs collapse, so "a , b" becomes "a b"."""
    n = 0
    space_pending = False
    for i in range(start, end):
        c = cps[i]
        if c < 128 and is_punctuation[c]:
            continue
        if c < is_space.shape[0] and is_space[c]:
            space_pending = n > 0  # leading whitespace is stripped
            continue
        if space_pending:
            out[n] = 32
            n += 1
            space_pending = False
        out[n] = c
        n += 1
    return n


@njit(cache=True, nogil=True)
def _hash_shingles(cps, first, width, count, out):
    """out[j] = 32-bit hash of cps[first + j : first + j + width], for j < count. Position-major loops so
    the inner loop runs across shingles and vectorizes."""
    for j in range(count):
        out[j] = _FNV_OFFSET
    for i in range(width):
        for j in range(count):
            out[j] = (out[j] ^ np.uint64(cps[first + i + j])) * _FNV_PRIME
    for j in range(count):
        out[j] = _fmix64(out[j]) >> _U32


@njit(cache=True, nogil=True)
def _permuted_min(hv, count, a, b, mins):
    """mins[k] = min(mins[k], min_j ((hv[j] * a[k] + b[k]) % prime) & 0xffffffff) with numpy's uint64
    wrap-around. x % (2**61 - 1) is folded as (x >> 61) + (x & prime) minus one prime at most."""
    for k in range(a.shape[0]):
        ak = a[k]
        bk = b[k]
        m = mins[k]
        for j in range(count):
            x = hv[j] * ak + bk
            r = (x >> _U61) + (x & _MERSENNE_PRIME)
            if r >= _MERSENNE_PRIME:
                r -= _MERSENNE_PRIME
            m = min(m, r & _LOW32)
        mins[k] = m


@njit(cache=True, nogil=True)
def _signature_kernel(cps, offsets, ngram, a, b, is_punctuation, is_space, out):
    hv = np.empty(_BLOCK, dtype=np.uint64)
    mins = np.empty(a.shape[0], dtype=np.uint64)
    text = np.empty(np.max(np.diff(offsets)) if offsets.shape[0] > 1 else 0, dtype=np.uint32)
    for d in range(offsets.shape[0] - 1):
        length = _normalize(cps, offsets[d], offsets[d + 1], is_punctuation, is_space, text)
        # A text shorter than one n-gram is one shingle of itself, never an empty (all-colliding) set.
        width = min(ngram, length)
        shingles = length - width + 1
        mins[:] = _LOW32
        for block in range(0, shingles, _BLOCK):
            count = min(_BLOCK, shingles - block)
            _hash_shingles(text, block, width, count, hv)
            _permuted_min(hv, count, a, b, mins)
        for k in range(mins.shape[0]):
            out[d, k] = np.uint32(mins[k])


def signatures(texts: list[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures of `texts`, uint32 of shape (len(texts), cfg.permutations)."""
    lowered = [t.lower() for t in texts]
    # One encode for the batch; "surrogatepass" keeps lone surrogates (legal in JSON escapes) as code points.
    cps = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in lowered], out=offsets[1:])
    a, b = permutations(cfg.permutations, cfg.seed)
    out = np.empty((len(texts), cfg.permutations), dtype=np.uint32)
    _signature_kernel(cps, offsets, cfg.ngram, a, b, IS_PUNCTUATION, IS_SPACE, out)
    return out


@njit(cache=True, nogil=True)
def _band_key_kernel(sigs, bands, rows, out):
    for d in range(sigs.shape[0]):
        for band in range(bands):
            # The band index seeds the hash, so equal rows in different bands give different keys.
            h = _fmix64(np.uint64(band + 1) * GOLDEN_GAMMA)
            for r in range(rows):
                h = _fmix64(h ^ np.uint64(sigs[d, band * rows + r]))
            out[d, band] = h


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """LSH bucket keys, uint64 of shape (n, bands): a 64-bit hash of each band's `rows` signature values (the
    signature's first bands x rows values; a wider signature's rest is for verification)."""
    if sigs.ndim == 2 and sigs.shape[1] > bands * rows:
        sigs = sigs[:, : bands * rows]
    if sigs.ndim != 2 or sigs.shape[1] != bands * rows:
        raise ValueError(f"signatures of shape {sigs.shape} do not split into {bands} bands x {rows} rows")
    out = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    _band_key_kernel(np.ascontiguousarray(sigs, dtype=np.uint32), bands, rows, out)
    return out


def compact(sigs: np.ndarray) -> np.ndarray:
    """The stored form of signatures: each value's low 16 bits (uint16). A minimum over a document's shingles
    is a small number whose low bits are uniform, so two unequal values collide with P = 2^-16: the estimate
    from compact signatures exceeds the full one's by 1.5e-5 on average (at most a few values in 256)."""
    return (np.asarray(sigs, np.uint32) & np.uint32(0xFFFF)).astype(np.uint16)


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of signature rows `a` and `b` (same shape): the share of equal values, which is
    `datasketch.MinHash.jaccard` for full signatures. Rows of 2-d inputs are compared pairwise."""
    return np.mean(np.asarray(a) == np.asarray(b), axis=-1)
