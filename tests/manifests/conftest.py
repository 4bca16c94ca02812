from __future__ import annotations

import pytest

from manifests.manifest import TokenizerEntry


@pytest.fixture
def tokenizer_entry() -> TokenizerEntry:
    """A tokenizer as a manifest records it; no model behind it (the contract never tokenizes)."""
    return TokenizerEntry(
        uri="test://tokenizer", sha256="0" * 64, vocab_size=1000, bos_id=1, eos_id=2, add_bos=False, add_eos=True
    )
