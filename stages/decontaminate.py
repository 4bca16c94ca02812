"""Benchmark decontamination: documents that share an n-gram with an evaluation item are dropped (or flagged).

The rule is GPT-3's (and datatrove's): the text is normalized as SlimPajama's near-duplicate rule normalizes it
(`stages.normalize`: lowercase, `string.punctuation` deleted, whitespace runs folded), split into words, and a
document matches an item when it holds one of the item's word n-grams (default n = 13), or, with `min_share`, at
least that share of them. An item shorter than n words (but at least `min_words`) is matched as a whole: its
words in a row. The `tokens` rule takes n-grams of token ids instead (the Llama-2/3 contamination analyses),
without normalization.

Each n-gram is a 64-bit hash: every word gets FNV-1a over its code points finished by MurmurHash3's fmix64, and a
window of k words a polynomial rolling hash of those (mod 2^64, odd base) finished by fmix64 with a seed per k.
The index is the sorted array of every item's n-gram hashes (with the item each belongs to) plus a bitset of
their top bits, so a document's n-grams are checked in a numba kernel: one bit test each, and only for the few
that pass a binary search among the ~8 keys that share the hash's top bits (2M n-grams: 16 MB of hashes, 8 MB of
item numbers, 4 MB of bits, 2 MB of bucket starts). A whole-string item
is keyed by its first `min_words` units and verified at a hit, so a document is hashed at two window sizes at
most per unit kind (n and min_words), whatever the items' lengths. At 2M n-grams and
~1e9 document n-grams the chance of one false match by hash collision is ~1e-4.

Ray-free: `pipeline/tasks/decontaminate.py` builds the index in a task, `pipeline/tasks/process.py` matches.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import math
from dataclasses import dataclass, field

import fsspec
import numpy as np
from numba import njit

from manifests.config import ConfigError
from stages.document import DECONTAMINATED
from stages.minhash import _fmix64
from stages.normalize import IS_PUNCTUATION, IS_SPACE

RULES = ("words", "tokens")
ACTIONS = ("drop", "flag")
FORMATS = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz"),
    "parquet": (".parquet",),
    "text": (".txt", ".txt.gz", ".txt.zst"),
}

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3 * 2 + 1)  # odd: multiplication by it is a bijection mod 2^64
_ONE = np.uint64(1)
_MAX_HITS = 1 << 16  # a batch's hits per call; a larger count is redone with room for all


def reason(set_name: str) -> str:
    """The drop reason of a document holding an item of the set (its funnel step: `stages.document.drop_step`)."""
    return f"{DECONTAMINATED}{set_name}"


# ---------------------------------------------------------------------------------------------- config


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ConfigError("name", f"{name!r}: use letters, digits, '-', '_' and '.'")


def _check_rule(
    ngram: int | None, rule: str | None, min_share: float | None, action: str | None, prefix: str = ""
) -> None:
    if ngram is not None and ngram < 1:
        raise ConfigError(
            f"{prefix}ngram",
            f"{ngram} words cannot match anything; give at least 1 (GPT-3 used 13, Llama-2's analysis 8 tokens)",
        )
    if rule is not None and rule not in RULES:
        raise ConfigError(
            f"{prefix}rule",
            f"{rule!r} is not a rule; use 'words' (normalized word n-grams) or 'tokens' (token-id n-grams)",
        )
    if min_share is not None and not 0.0 <= min_share <= 1.0:
        raise ConfigError(f"{prefix}min_share", f"{min_share} is outside [0, 1]; 0 means any one n-gram")
    if action is not None and action not in ACTIONS:
        raise ConfigError(
            f"{prefix}action",
            f"{action!r} is not an action; use 'drop' (remove the document) or 'flag' (keep it, record it)",
        )


@dataclass(kw_only=True, slots=True)
class EvalSetConfig:
    """One evaluation set: its files (fsspec URLs or globs; .jsonl[.gz|.zst], .parquet, or .txt with one item a
    line) and the record fields whose values, joined by newlines, make an item's text. `ngram`, `rule`,
    `min_share` and `action` override the section's for this set."""

    name: str
    files: list[str]
    fields: list[str] = field(default_factory=lambda: ["text"])  # dotted for nested keys; lists are joined
    ngram: int | None = None
    rule: str | None = None
    min_share: float | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.files:
            raise ConfigError("files", "give at least one file or glob of the set's items")
        if not self.fields or not all(isinstance(f, str) and f for f in self.fields):
            raise ConfigError("fields", "give the record fields that make an item's text, e.g. [question, answer]")
        _check_rule(self.ngram, self.rule, self.min_share, self.action)


@dataclass(kw_only=True, slots=True)
class DecontaminateConfig:
    """The recipe's `decontaminate:` section: the eval sets, and the rule every set uses unless it says otherwise."""

    sets: list[EvalSetConfig]
    ngram: int = 13
    rule: str = "words"
    min_share: float = 0.0  # 0: one shared n-gram matches; else the share of the item's n-grams a document must hold
    min_words: int = 8  # items shorter than ngram match as a whole string, down to this many words; shorter: left out
    action: str = "drop"

    def __post_init__(self) -> None:
        if not self.sets:
            raise ConfigError("sets", "list at least one eval set (name, files, fields), or leave `decontaminate` out")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ConfigError("sets", f"set names must be unique, got {names}")
        _check_rule(self.ngram, self.rule, self.min_share, self.action)
        if self.min_words < 1:
            raise ConfigError("min_words", f"{self.min_words}: give at least 1")

    def rules(self) -> list[SetRule]:
        """Each set's effective rule, in recipe order."""
        return [
            SetRule(
                name=s.name,
                ngram=s.ngram or self.ngram,
                rule=s.rule or self.rule,
                min_share=self.min_share if s.min_share is None else s.min_share,
                min_words=min(self.min_words, s.ngram or self.ngram),
                action=s.action or self.action,
            )
            for s in self.sets
        ]

    def uses_tokens(self) -> bool:
        return any(r.rule == "tokens" for r in self.rules())


@dataclass(frozen=True, slots=True)
class SetRule:
    name: str
    ngram: int
    rule: str
    min_share: float
    min_words: int
    action: str

    def as_json(self) -> dict:
        return {"unit": self.rule, "n": self.ngram, "min_share": self.min_share, "min_words": self.min_words}


# ---------------------------------------------------------------------------------------------- eval sets


class EvalSetError(ValueError):
    """An eval set that cannot be used; the message names the set, the file and the fix (one line)."""


@dataclass(frozen=True, slots=True)
class EvalItem:
    where: str  # file#line (1-based) or file#row (0-based)
    text: str


@dataclass(frozen=True, slots=True)
class EvalSet:
    name: str
    files: list[str]  # URLs, sorted
    sha256: str  # of the files' bytes, in that order
    items: list[EvalItem]


def _format(path: str) -> str | None:
    lower = path.lower()
    return next((kind for kind, suffixes in FORMATS.items() if lower.endswith(suffixes)), None)


def _field(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(_as_text(v) for v in value)
    if isinstance(value, dict):
        return "\n".join(_as_text(v) for v in value.values())
    return str(value)


def _records(data: bytes, kind: str, url: str, fail) -> list[tuple[str, dict | str]]:
    """(location, record) of one file's records; a plain text file's records are its non-empty lines."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as e:  # not parquet, truncated
            fail(url, f"is not a readable parquet file ({type(e).__name__}: {e}); give a parquet, .jsonl or .txt file")
        return [(f"row {i}", r) for i, r in enumerate(rows)]
    text = data.decode("utf-8", "replace")
    if kind == "text":
        return [(f"line {i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            fail(url, f"line {i} is not JSON ({e.msg}); give one JSON object per line")
        if not isinstance(record, dict):
            fail(url, f"line {i} is a JSON {type(record).__name__}, not an object; give one object per line")
        records.append((f"line {i}", record))
    return records


def _expand(pattern: str, fail) -> list[tuple[fsspec.AbstractFileSystem, str]]:
    try:
        fs, path = fsspec.core.url_to_fs(pattern)
    except (ImportError, ValueError) as e:
        fail(pattern, f"cannot be opened ({e}); check the URL")
    try:
        found = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.isfile(path) else [])
    except Exception as e:  # host unreachable, access denied
        fail(pattern, f"cannot be listed ({type(e).__name__}: {e}); check the address, the network and the credentials")
    found = [p for p in found if not any(c in p for c in "*?[") or fnmatch.fnmatch(p, path)]
    if not found:
        fail(pattern, "does not exist (no file matches); fix the path in `files`, relative to the recipe's folder")
    return [(fs, p) for p in found]


def read_eval_set(config: EvalSetConfig) -> EvalSet:
    """The set's items from its files, checked: every file exists and has a known format, every field is in
    some record, and the set has an item. Raises EvalSetError naming the set, the file and the fix."""

    def fail(url: str, message: str):
        raise EvalSetError(f"decontaminate set {config.name!r}: {url} {message}")

    digest = hashlib.sha256()
    items: list[EvalItem] = []
    urls = []
    for pattern in config.files:
        for fs, path in _expand(pattern, fail):
            url = fs.unstrip_protocol(path)
            kind = _format(path)
            if kind is None:
                fail(
                    url, f"has no known format; name it .jsonl, .parquet or .txt (one item a line); formats: {FORMATS}"
                )
            with fs.open(path, "rb", compression="infer") as f:
                data = f.read()
            digest.update(hashlib.sha256(data).digest())
            urls.append(url)
            records = _records(data, kind, url, fail)
            name = path.rsplit("/", 1)[-1]
            if kind == "text":
                items += [EvalItem(f"{name}#{where.split()[1]}", r) for where, r in records]
                continue
            missing = [f for f in config.fields if not any(_field(r, f) is not None for _, r in records)]
            if records and missing:
                seen = sorted({k for _, r in records[:100] for k in r})
                fail(
                    url,
                    f"has no record with field {missing[0]!r} (fields there: {', '.join(seen)}); fix `fields` of this "
                    "set",
                )
            for where, r in records:
                text = "\n".join(t for t in (_as_text(_field(r, f)) for f in config.fields) if t)
                if text.strip():
                    items.append(EvalItem(f"{name}#{where.split()[1]}", text))
    if not items:
        fail(
            ", ".join(urls),
            "holds no item (no record with text in the given fields); give the set's real files or remove the set",
        )
    return EvalSet(config.name, urls, digest.hexdigest(), items)


# ---------------------------------------------------------------------------------------------- hashing


@njit(cache=True, nogil=True)
def _words(cps, start, end, is_punctuation, is_space, hashes, starts, ends):
    """The normalized words of the lowercased text cps[start:end], as `stages.minhash._normalize` makes them
    (punctuation deleted, whitespace splits): hashes[k] = the 64-bit hash of word k, starts[k]/ends[k] its
    code points relative to `start`. Returns the word count."""
    n = 0
    h = _FNV_OFFSET
    in_word = False
    last = 0
    for i in range(start, end):
        c = cps[i]
        if c < 128 and is_punctuation[c]:
            continue
        if c < is_space.shape[0] and is_space[c]:
            if in_word:
                hashes[n] = _fmix64(h)
                ends[n] = last + 1
                n += 1
                in_word = False
            continue
        if not in_word:
            in_word = True
            h = _FNV_OFFSET
            starts[n] = i - start
        h = (h ^ np.uint64(c)) * _FNV_PRIME
        last = i - start
    if in_word:
        hashes[n] = _fmix64(h)
        ends[n] = last + 1
        n += 1
    return n


@njit(cache=True, nogil=True)
def _window_seed(k):
    return _fmix64(np.uint64(k) * _GOLDEN)


@njit(cache=True, nogil=True)
def _windows(units, first, count, k, out):
    """out[j] = the hash of units[first + j : first + j + k], for j < count - k + 1 (rolling); returns that count."""
    windows = count - k + 1
    if windows <= 0:
        return 0
    top = _ONE
    for _ in range(k - 1):
        top *= _BASE
    seed = _window_seed(k)
    h = np.uint64(0)
    for j in range(k):
        h = h * _BASE + units[first + j]
    out[0] = _fmix64(h ^ seed)
    for j in range(1, windows):
        h = (h - units[first + j - 1] * top) * _BASE + units[first + j + k - 1]
        out[j] = _fmix64(h ^ seed)
    return windows


@njit(cache=True, nogil=True)
def _unit_hashes(values):
    """Token ids as units: each an fmix64 of itself (so ids and word hashes share one kernel)."""
    out = np.empty(values.shape[0], np.uint64)
    for i in range(values.shape[0]):
        out[i] = _fmix64(np.uint64(values[i]) + _GOLDEN)
    return out


@njit(cache=True, nogil=True)
def _hits(
    units, offsets, lengths, keys, bits, shift, buckets, bucket_shift, out_doc, out_first, out_len, out_lo, out_hi
):
    """Every window of `units` (documents at `offsets`) of each size in `lengths` whose hash is in `keys`
    (sorted); `bits` is a bitset of the keys' top bits (a key's bit: hash >> shift) tested first, and a hash
    that passes is searched for only among the keys that share its top bits (`buckets`, by hash >> bucket_shift).
    Writes (document, first unit, size, first and end key of its hash) per hit; returns the number of hits (more
    than out_doc's size: only that many were written)."""
    n = 0
    buf = np.empty(max(1, np.max(np.diff(offsets)) if offsets.shape[0] > 1 else 1), np.uint64)
    for d in range(offsets.shape[0] - 1):
        first, count = offsets[d], offsets[d + 1] - offsets[d]
        for k in lengths:
            windows = _windows(units, first, count, k, buf)
            for j in range(windows):
                h = buf[j]
                top = h >> shift
                if not (bits[top >> np.uint64(6)] >> (top & np.uint64(63))) & _ONE:
                    continue
                bucket = h >> bucket_shift
                lo, hi = buckets[bucket], buckets[bucket + 1]
                p = lo + np.searchsorted(keys[lo:hi], h)
                if p < hi and keys[p] == h:
                    if n < out_doc.shape[0]:
                        out_doc[n] = d
                        out_first[n] = j
                        out_len[n] = k
                        out_lo[n] = p  # the hash's first key: it names the hash
                        q = p + 1
                        while q < hi and keys[q] == h:  # a hash several items share: one key each
                            q += 1
                        out_hi[n] = q
                    n += 1
    return n


@dataclass(slots=True)
class Words:
    """The normalized words of a batch of texts: each word's hash and its code-point span in its text."""

    hashes: np.ndarray  # uint64, every text's words back to back
    offsets: np.ndarray  # int64, len(texts) + 1: text d's words are [offsets[d], offsets[d+1])
    starts: np.ndarray  # int64: a word's first code point in its (lowercased) text
    ends: np.ndarray


def words(texts: list[str]) -> Words:
    lowered = [t.lower() for t in texts]
    cps = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    bounds = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in lowered], out=bounds[1:])
    hashes, starts, ends = (np.empty(len(cps) // 2 + 1, dt) for dt in (np.uint64, np.int64, np.int64))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    for d in range(len(texts)):
        b = offsets[d]
        n = _words(cps, bounds[d], bounds[d + 1], IS_PUNCTUATION, IS_SPACE, hashes[b:], starts[b:], ends[b:])
        offsets[d + 1] = b + n
    total = offsets[-1]
    return Words(hashes[:total].copy(), offsets, starts[:total].copy(), ends[:total].copy())


def unit_sequences(texts: list[str] | None, tokens: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(units back to back, offsets) of texts' words (`words`) or of token-id arrays."""
    if texts is not None:
        w = words(texts)
        return w.hashes, w.offsets
    lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
    offsets = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
    return _unit_hashes(flat.astype(np.int64)), offsets


def item_ngrams(units: np.ndarray, k: int) -> np.ndarray:
    """The distinct hashes of an item's k-unit windows (a shorter item: none)."""
    out = np.empty(max(0, len(units) - k + 1), np.uint64)
    n = _windows(units, 0, len(units), k, out)
    return np.unique(out[:n])


# ---------------------------------------------------------------------------------------------- the index


@dataclass(slots=True)
class Table:
    """The n-grams of one unit kind (words or tokens): sorted hashes, the item each belongs to, and the
    window sizes a document is scanned with."""

    keys: np.ndarray  # uint64, sorted (a hash several items share appears once per item)
    items: np.ndarray  # uint32, the global item number of each key
    lengths: np.ndarray  # int64, window sizes to hash documents with
    bits: np.ndarray  # uint64 bitset over the keys' top `64 - shift` bits
    shift: int
    # whole-string items (shorter than n): keyed by their first min_words units, verified against all of them
    short_ids: np.ndarray  # int64, sorted item numbers
    short_offsets: np.ndarray  # int64, len(short_ids) + 1
    short_units: np.ndarray  # uint64, their units back to back
    # keys[buckets[b]:buckets[b + 1]] are the keys whose top bits (key >> bucket_shift) are b: a hash is searched
    # for among ~8 keys, not all (derived from `keys` here, not stored in the index file)
    buckets: np.ndarray = field(init=False)
    bucket_shift: int = field(init=False)

    def __post_init__(self) -> None:
        bucket_bits = int(min(20, max(8, math.ceil(math.log2(max(1, len(self.keys)))) - 3)))
        self.bucket_shift = 64 - bucket_bits
        tops = np.arange(1 << bucket_bits, dtype=np.uint64) << np.uint64(self.bucket_shift)
        self.buckets = np.append(np.searchsorted(self.keys, tops), len(self.keys)).astype(np.int64)

    @classmethod
    def of(cls, keys: np.ndarray, items: np.ndarray, lengths: list[int], short: dict[int, np.ndarray]) -> "Table":
        order = np.lexsort((items, keys))
        keys, items = keys[order], items[order]
        top_bits = int(min(28, max(10, math.ceil(math.log2(max(1, len(keys)) * 16)))))
        shift = 64 - top_bits
        bits = np.zeros(1 << (top_bits - 6), np.uint64)
        tops = keys >> np.uint64(shift)
        np.bitwise_or.at(
            bits, (tops >> np.uint64(6)).astype(np.int64), np.left_shift(np.uint64(1), tops & np.uint64(63))
        )
        ids = np.asarray(sorted(short), np.int64)
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([len(short[i]) for i in ids.tolist()], out=offsets[1:])
        units = np.concatenate([short[i] for i in ids.tolist()]) if len(ids) else np.zeros(0, np.uint64)
        lengths = np.asarray(sorted(set(lengths)), np.int64)
        return cls(keys, items.astype(np.uint32), lengths, bits, shift, ids, offsets, units.astype(np.uint64))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.items.nbytes + self.bits.nbytes + self.buckets.nbytes + self.short_units.nbytes

    def whole(self, items: np.ndarray, docs: np.ndarray, firsts: np.ndarray, units: np.ndarray, offsets: np.ndarray):
        """False where a hit on a whole-string item's first units is not followed by the rest of the item."""
        ok = np.ones(len(items), bool)
        if not len(self.short_ids):
            return ok
        pos = np.minimum(np.searchsorted(self.short_ids, items), len(self.short_ids) - 1)
        rows = np.flatnonzero(self.short_ids[pos] == items)
        item_start = self.short_offsets[pos[rows]]
        length = self.short_offsets[pos[rows] + 1] - item_start
        doc_start = offsets[docs[rows]] + firsts[rows]
        fits = doc_start + length <= offsets[docs[rows] + 1]
        ok[rows[~fits]] = False
        for size in np.unique(length[fits]).tolist():  # rows of one item length at a time, compared as 2-d slices
            mine = np.flatnonzero(fits & (length == size))
            steps = np.arange(size)
            same = units[doc_start[mine, None] + steps] == self.short_units[item_start[mine, None] + steps]
            ok[rows[mine]] = same.all(axis=1)
        return ok


@dataclass(slots=True)
class Index:
    """What the process tasks match against: one Table per unit kind in use, and per item its set and its
    n-gram count (the denominator of `min_share`)."""

    rules: list[SetRule]
    tables: dict[str, Table]  # "words" / "tokens"
    item_set: np.ndarray  # uint16: the set (index into rules) of each item
    item_ngrams: np.ndarray  # uint32: the item's distinct n-grams (1 for a whole-string item)
    stats: list[dict] = field(default_factory=list)  # per set: items, indexed, whole-string, too short, n-grams

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables.values()) + self.item_set.nbytes + self.item_ngrams.nbytes

    def arrays(self) -> dict[str, np.ndarray]:
        """The index as named arrays (`Index.from_arrays` reads them back), for one .npz file."""
        out = {"item_set": self.item_set, "item_ngrams": self.item_ngrams}
        for unit, t in self.tables.items():
            out.update(
                {
                    f"{unit}.keys": t.keys,
                    f"{unit}.items": t.items,
                    f"{unit}.lengths": t.lengths,
                    f"{unit}.bits": t.bits,
                    f"{unit}.shift": np.asarray(t.shift),
                    f"{unit}.short_ids": t.short_ids,
                    f"{unit}.short_offsets": t.short_offsets,
                    f"{unit}.short_units": t.short_units,
                }
            )
        return out

    @classmethod
    def from_arrays(cls, rules: list[SetRule], arrays, stats: list[dict]) -> "Index":
        tables = {
            unit: Table(
                arrays[f"{unit}.keys"],
                arrays[f"{unit}.items"],
                arrays[f"{unit}.lengths"],
                arrays[f"{unit}.bits"],
                int(arrays[f"{unit}.shift"]),
                arrays[f"{unit}.short_ids"],
                arrays[f"{unit}.short_offsets"],
                arrays[f"{unit}.short_units"],
            )
            for unit in RULES
            if f"{unit}.keys" in arrays
        }
        return cls(rules, tables, arrays["item_set"], arrays["item_ngrams"], stats)


def build_index(rules: list[SetRule], sets: list[EvalSet], encode=None) -> Index:
    """The index of every set's items under its rule. `encode(texts) -> list of token-id arrays` is needed
    only by sets with the tokens rule."""
    keys: dict[str, list[np.ndarray]] = {u: [] for u in RULES}
    owners: dict[str, list[np.ndarray]] = {u: [] for u in RULES}
    lengths: dict[str, set[int]] = {u: set() for u in RULES}
    short: dict[str, dict[int, np.ndarray]] = {u: {} for u in RULES}
    item_set, ngram_counts, stats = [], [], []
    for set_no, (rule, eval_set) in enumerate(zip(rules, sets)):
        texts = [item.text for item in eval_set.items]
        units, offsets = unit_sequences(texts, None) if rule.rule == "words" else unit_sequences(None, encode(texts))
        counts = {"items": len(texts), "whole_string": 0, "too_short": 0, "ngrams": 0}
        for i in range(len(texts)):
            seq = units[offsets[i] : offsets[i + 1]]
            # a whole-string item is keyed by its first min_words units (one scan length for all of them) and
            # verified against the rest of its units at a hit (`Table.whole`)
            k = rule.ngram if len(seq) >= rule.ngram else rule.min_words
            grams = item_ngrams(seq if k == rule.ngram else seq[:k], k) if len(seq) >= k else np.zeros(0, np.uint64)
            if len(seq) < rule.ngram:
                counts["whole_string" if len(grams) else "too_short"] += 1
                if len(grams):
                    short[rule.rule][len(item_set)] = seq.copy()
            if len(grams):
                lengths[rule.rule].add(k)
            keys[rule.rule].append(grams)
            owners[rule.rule].append(np.full(len(grams), len(item_set), np.uint32))
            item_set.append(set_no)
            ngram_counts.append(len(grams))
            counts["ngrams"] += len(grams)
        stats.append(counts)
    tables = {
        u: Table.of(np.concatenate(keys[u]), np.concatenate(owners[u]), sorted(lengths[u]), short[u])
        for u in RULES
        if lengths[u]
    }
    return Index(rules, tables, np.asarray(item_set, np.uint16), np.asarray(ngram_counts, np.uint32), stats)


# ---------------------------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class Match:
    """A document that matched an item: the set (index into the rules), the item, and the span of the first
    shared n-gram in the document's units (words or tokens)."""

    doc: int  # position in the batch
    set_no: int
    item: int
    first: int  # first unit of the matched span
    size: int  # units in it


def _scan(table: Table, units: np.ndarray, offsets: np.ndarray):
    capacity = _MAX_HITS
    while True:
        out = (
            np.empty(capacity, np.int64),
            np.empty(capacity, np.int64),
            np.empty(capacity, np.int64),
            np.empty(capacity, np.int64),
            np.empty(capacity, np.int64),
        )
        n = _hits(
            units,
            offsets,
            table.lengths,
            table.keys,
            table.bits,
            np.uint64(table.shift),
            table.buckets,
            np.uint64(table.bucket_shift),
            *out,
        )
        if n <= capacity:
            return tuple(a[:n] for a in out)
        capacity = n


def match(index: Index, unit: str, units: np.ndarray, offsets: np.ndarray) -> list[Match]:
    """The (document, item) pairs of a batch that match under the item's set's rule, one Match each (the span
    of its first shared n-gram), in document then item order."""
    table = index.tables.get(unit)
    if table is None or len(units) == 0:
        return []
    docs, firsts, sizes, lo, hi = _scan(table, units, offsets)
    if not len(docs):
        return []
    hashes = lo  # a hash's first position among the keys stands for the hash
    # one row per (hit, item holding its hash): a hash several items share counts for each of them
    per_hit = hi - lo
    row_hit = np.repeat(np.arange(len(docs)), per_hit)
    row_key = np.arange(per_hit.sum()) - np.repeat(np.cumsum(per_hit) - per_hit, per_hit) + np.repeat(lo, per_hit)
    items = table.items[row_key].astype(np.int64)
    whole = table.whole(items, docs[row_hit], firsts[row_hit], units, offsets)
    if not whole.all():
        row_hit, items = row_hit[whole], items[whole]
    # the first hit of each (document, item, hash), then per (document, item) its first hit and distinct hashes
    order = np.lexsort((row_hit, hashes[row_hit], items, docs[row_hit]))
    doc_s, item_s, hash_s, hit_s = docs[row_hit][order], items[order], hashes[row_hit][order], row_hit[order]
    new_hash = np.ones(len(order), bool)
    new_hash[1:] = (doc_s[1:] != doc_s[:-1]) | (item_s[1:] != item_s[:-1]) | (hash_s[1:] != hash_s[:-1])
    doc_s, item_s, hit_s = doc_s[new_hash], item_s[new_hash], hit_s[new_hash]
    starts = np.flatnonzero(np.r_[True, (doc_s[1:] != doc_s[:-1]) | (item_s[1:] != item_s[:-1])])
    distinct = np.diff(np.r_[starts, len(doc_s)])
    first_hit = np.minimum.reduceat(hit_s, starts)
    pair_doc, pair_item = doc_s[starts], item_s[starts]
    share = np.array([r.min_share for r in index.rules])[index.item_set[pair_item]]
    needed = np.maximum(1, np.ceil(share * index.item_ngrams[pair_item] - 1e-9))
    keep = np.flatnonzero(distinct >= needed)
    span = sizes[first_hit].copy()  # a whole-string item's span is all of it, not only the units it is keyed by
    if len(table.short_ids):
        pos = np.minimum(np.searchsorted(table.short_ids, pair_item), len(table.short_ids) - 1)
        short = table.short_ids[pos] == pair_item
        span[short] = np.diff(table.short_offsets)[pos[short]]
    columns = (pair_doc[keep], index.item_set[pair_item[keep]], pair_item[keep], firsts[first_hit[keep]], span[keep])
    return [Match(*row) for row in zip(*(c.tolist() for c in columns))]  # Python ints, not numpy scalars
