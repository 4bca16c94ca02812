import pickle

import numpy as np
import pytest

from manifests.shards import (
    ShardFormatError,
    decode_index,
    encode_index,
    open_tokens,
    read_index,
    read_index_header,
    token_dtype,
)
from stages.tokenize import Tokenizer, TokenizerError, read_model_bytes

MODEL = "pkg://mistral_common/data/tokenizer.model.v1"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_bytes(read_model_bytes(MODEL), add_bos=False, add_eos=True)


def test_encode_matches_sentencepiece_and_appends_eos(tokenizer):
    texts = ["In the beginning God created the heaven and the earth.", "def f(x):\n    return x + 1\n", "ünïcödé ✓"]
    tokens, lengths = tokenizer.encode(texts)
    expected = [ids + [tokenizer.eos_id] for ids in tokenizer.processor.encode(texts)]
    assert tokens.dtype == np.uint16 and tokenizer.vocab_size == 32000
    assert lengths.tolist() == [len(e) for e in expected]
    assert tokens.tolist() == [t for e in expected for t in e]
    assert tokenizer.decode(tokens[: lengths[0] - 1]) == texts[0]


def test_bos_and_eos_both(tokenizer):
    both = Tokenizer.from_bytes(tokenizer.model_bytes, add_bos=True, add_eos=True)
    tokens, lengths = both.encode(["a b", "c"])
    assert tokens[0] == both.bos_id and tokens[lengths[0] - 1] == both.eos_id and tokens[lengths[0]] == both.bos_id


def test_tokenizer_pickles_by_model_bytes(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode(["hello world"])[0].tolist() == tokenizer.encode(["hello world"])[0].tolist()


def test_unreadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="cannot be read"):
        read_model_bytes(str(tmp_path / "missing.model"))
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        Tokenizer.from_bytes(bogus.read_bytes(), False, True)


def test_index_round_trip_and_memmap(tmp_path, tokenizer):
    tokens, lengths = tokenizer.encode(["one document", "and another one", "third"])
    ends = np.cumsum(lengths).astype(np.uint64)
    (tmp_path / "s.bin").write_bytes(tokens.tobytes())
    (tmp_path / "s.idx").write_bytes(encode_index(tokens.dtype, ends, np.array([0, 1, 0]), np.array([5, 1 << 32, 7])))
    index = read_index(tmp_path / "s.idx")
    assert index.documents == 3 and index.tokens == len(tokens) and index.dtype == np.uint16
    assert index.source_ids.tolist() == [0, 1, 0] and index.origins.tolist() == [5, 1 << 32, 7]
    start, end = index.doc_span(1)
    assert np.array_equal(open_tokens(tmp_path / "s.bin", index)[start:end], tokens[start:end])
    header = read_index_header(tmp_path / "s.idx")  # what the trainer's reader reads: the header alone
    assert (header.dtype, header.documents, header.tokens) == (index.dtype, index.documents, index.tokens)
    assert np.array_equal(open_tokens(tmp_path / "s.bin", header), open_tokens(tmp_path / "s.bin", index))


def test_index_refuses_corruption(tmp_path):
    data = encode_index(np.dtype("<u2"), np.array([3, 5], np.uint64), np.array([0, 0]), np.array([0, 1]))
    with pytest.raises(ShardFormatError, match="truncated"):
        decode_index(data[:-1], "x.idx")
    with pytest.raises(ShardFormatError, match="magic"):
        decode_index(b"X" + data[1:], "x.idx")
    (tmp_path / "short.idx").write_bytes(data[:-1])  # the header intact, an array cut short
    with pytest.raises(ShardFormatError, match="short.idx: .* truncated"):
        read_index_header(tmp_path / "short.idx")
    (tmp_path / "s.bin").write_bytes(b"\0" * 9)
    with pytest.raises(ShardFormatError, match="truncated or was changed"):
        open_tokens(tmp_path / "s.bin", decode_index(data))


def test_token_dtype_by_vocabulary():
    assert token_dtype(32000) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(128256) == np.uint32
