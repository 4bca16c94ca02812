"""A corpus whose domains differ clearly, for the sweep's tests: the sample corpus's SlimPajama (the King James
Bible as RedPajamaBook, standard-library docstrings as the other subsets) and a StarCoderData of two languages,
`python` (standard-library modules) and `c` (the C headers of this machine's /usr/include): real text, in files
small enough that a hash-chosen validation share holds a steady number of documents of each."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sample_corpus import sample_recipe

CODE_BYTES = 300_000  # per language
CODE_FILE = (1_000, 12_000)  # bytes of one file: no bare markers, no generated tables


def code_files(paths, limit: int = CODE_BYTES) -> list[str]:
    """Texts of the files among `paths` (sorted) of CODE_FILE size, up to `limit` bytes in all."""
    texts, total = [], 0
    for path in sorted(paths):
        try:
            if not CODE_FILE[0] <= path.stat().st_size <= CODE_FILE[1]:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        total += len(text.encode())
        if total >= limit:
            break
    assert total >= limit // 2, f"too little code of CODE_FILE size for the sweep's corpus: {total} bytes"
    return texts


def write_corpus(sample: Path, out: Path) -> Path:
    """The sample corpus's SlimPajama copied to `out`, and a StarCoderData of `python/` and `c/`, three parquet
    files each (whose names put 6 and 9 documents in the 10% validation share)."""
    shutil.copytree(sample / "SlimPajama-627B", out / "SlimPajama-627B")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    languages = {
        "python": code_files(p for p in stdlib.glob("*.py")),
        "c": code_files(Path("/usr/include").rglob("*.h")),
    }
    for language, texts in languages.items():
        folder = out / "starcoderdata" / language
        folder.mkdir(parents=True)
        for i in range(3):
            pq.write_table(pa.table({"content": texts[i::3]}), folder / f"train-{i:05d}-of-00003.parquet")
    return out


DOMAINS = [
    {"name": "bible", "source": "slimpajama", "subsets": ["RedPajamaBook"], "weight": 4},
    {"name": "docs", "source": "slimpajama", "weight": 2},
    {"name": "python", "source": "starcoderdata", "subsets": ["python"], "weight": 3},
    {"name": "c", "source": "starcoderdata", "subsets": ["c"], "weight": 1},
]


VOCAB = 2048  # a tokenizer trained on the corpus, for the `tiny-2k` proxies (a 32k vocabulary's output layer
# would cost 15x the rest of so small a model)


def write_recipe(corpus: Path, folder: Path, tokenizer: Path | None = None, **sections) -> Path:
    """The sample recipe over `corpus` with the four domains above (every language folder of StarCoderData, a
    larger validation share so that each domain's validation loss is measured on a few thousand tokens), and a
    VOCAB-token sentencepiece model trained on it; with `tokenizer`, that model as a file (the sweep's recipe:
    the same processed corpus, since a process output is keyed by the tokenizer's sha256)."""
    sources = [
        {"name": "slimpajama", "root": str(corpus / "SlimPajama-627B")},
        {
            "name": "starcoderdata",
            "root": str(corpus / "starcoderdata"),
            "train": ["*/*.parquet"],
            "validation_fraction": 0.1,
        },
    ]
    tokenize = {"model": str(tokenizer)} if tokenizer else {"model": "", "train": {"vocab_size": VOCAB}}
    return sample_recipe(
        corpus, folder, name="four-domains", sources=sources, domains=DOMAINS, tokenizer=tokenize, **sections
    )
