"""Tokenize: sentencepiece batch encoding into one flat token array per batch, BOS/EOS as the recipe says."""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import itertools
from dataclasses import dataclass
from typing import Iterable

import fsspec
import numpy as np
import sentencepiece as spm

from manifests.config import ConfigError
from manifests.manifest import TokenizerEntry
from manifests.shards import token_dtype
from stages.extras import install_hint, missing_for_url


@dataclass(kw_only=True, slots=True)
class TokenizerTrainConfig:
    vocab_size: int = 32000
    model_type: str = "bpe"
    sample_documents: int = 200_000

    def __post_init__(self) -> None:
        if self.vocab_size < 100:
            raise ConfigError("vocab_size", "must be at least 100")
        if self.sample_documents < 200:  # sentencepiece's trainer failed (INTERNAL error) on 100 here
            raise ConfigError("sample_documents", f"{self.sample_documents} is too few to train on; give at least 200")


@dataclass(kw_only=True, slots=True)
class TokenizerConfig:
    model: str = ""  # path / fsspec URL of a sentencepiece .model, or pkg://package/path/in/package
    add_bos: bool = False
    add_eos: bool = True
    train: TokenizerTrainConfig | None = None  # train a model from the build's own text instead

    def __post_init__(self) -> None:
        if not self.model and self.train is None:
            raise ConfigError(
                "model", "give a sentencepiece .model path (e.g. Llama-2's tokenizer.model) or a `train:` section"
            )


class TokenizerError(ValueError):
    pass


def read_model_bytes(uri: str) -> bytes:
    """A sentencepiece model from a local path, an fsspec URL, or `pkg://package/path/inside/package`
    (how the demo reaches the model shipped in mistral-common without a network)."""
    try:
        if uri.startswith("pkg://"):
            package, _, inner = uri[len("pkg://") :].partition("/")
            return (importlib.resources.files(package) / inner).read_bytes()
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except ImportError as e:  # a package that is not installed: pkg://'s (mistral_common) or the URL scheme's (hf://)
        hint = missing_for_url(uri) or (f"{e.name} is not installed: {install_hint(e.name)}" if e.name else str(e))
        raise TokenizerError(f"tokenizer.model {uri!r} cannot be opened: {hint}") from None
    except Exception as e:  # any failure to fetch a user-given URI (no network, no such file, access denied)
        raise TokenizerError(
            f"tokenizer.model {uri!r} cannot be read ({type(e).__name__}: {e}); check the path or URL and the network, "
            "or point the recipe at a local copy"
        ) from None


@dataclass(slots=True)
class Tokenizer:
    model_bytes: bytes
    add_bos: bool
    add_eos: bool
    processor: spm.SentencePieceProcessor

    @classmethod
    def from_bytes(cls, model_bytes: bytes, add_bos: bool, add_eos: bool) -> "Tokenizer":
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"not a sentencepiece model ({e})") from None
        return cls(model_bytes, add_bos, add_eos, processor)

    def __reduce__(self):
        # The processor itself does not pickle; Ray ships the model bytes and each task reloads them.
        return (Tokenizer.from_bytes, (self.model_bytes, self.add_bos, self.add_eos))

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def sha256(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()

    def manifest_entry(self, uri: str, path: str | None = None) -> TokenizerEntry:
        """This tokenizer as a manifest records it: where its model came from (`uri`), and `path`, its copy
        beside the manifest when there is one."""
        return TokenizerEntry(
            uri=uri,
            sha256=self.sha256(),
            vocab_size=self.vocab_size,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            add_bos=self.add_bos,
            add_eos=self.add_eos,
            path=path,
        )

    def encode(self, texts: list[str], num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(tokens of all documents back to back, tokens per document), specials included."""
        # sentencepiece places BOS/EOS itself: no second pass over the tokens to make room for them
        ids = self.processor.encode(texts, add_bos=self.add_bos, add_eos=self.add_eos, num_threads=num_threads)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
        return tokens, lengths

    def decode(self, tokens: np.ndarray) -> str:
        return self.processor.decode([int(t) for t in tokens])


def train_model(texts: Iterable[str], vocab_size: int, model_type: str, seed_sentences: int) -> bytes:
    """Train a sentencepiece model from the build's own text; deterministic for the same texts."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=False,
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()
