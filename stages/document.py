"""The unit every stage works on: a batch of documents from one input file, as parallel lists."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class DocBatch:
    """Documents of one input file. `ordinals` are 1-based line numbers (JSONL) or 0-based row numbers
    (parquet); with the file's path they name every document (`doc_id`)."""

    source: str
    path: str  # relative to the source root, as listed in the manifest
    ordinals: list[int] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)  # redpajama_set_name or language folder
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def append(self, ordinal: int, subset: str, text: str) -> None:
        self.ordinals.append(ordinal)
        self.subsets.append(subset)
        self.texts.append(text)

    def select(self, keep: list[bool]) -> "DocBatch":
        """The documents whose `keep` flag is true, in order."""
        return DocBatch(
            self.source,
            self.path,
            [o for o, k in zip(self.ordinals, keep) if k],
            [s for s, k in zip(self.subsets, keep) if k],
            [t for t, k in zip(self.texts, keep) if k],
        )

    def doc_id(self, i: int) -> str:
        return doc_id(self.source, self.path, self.ordinals[i])


def doc_id(source: str, path: str, ordinal: int) -> str:
    """How a person sees a document named: its source, its file (relative to the source root) and line or row."""
    return f"{source}/{path}#{ordinal}"


@dataclass(slots=True)
class BadRecord:
    """Input that could not become a document. Written to the quarantine file, counted by `reason`."""

    source: str
    path: str
    location: str  # "line 17", "row 3", "byte 81920", "file"
    reason: str  # one of BAD_INPUT_REASONS
    error: str
    raw: str = ""  # the first bytes of the offending record, for a person to look at

    def as_json(self) -> dict:
        return {
            "source": self.source,
            "path": self.path,
            "location": self.location,
            "reason": self.reason,
            "error": self.error,
            "raw": self.raw,
        }


BAD_INPUT_REASONS = (
    "invalid_json",
    "invalid_utf8",
    "missing_text",
    "non_string_text",
    "empty_text",
    "truncated_compressed",
    "corrupt_compressed",
    "missing_text_column",
    "not_parquet",
    "empty_file",
    "unreadable_file",
    "nul_bytes",
    "oversized_document",
)

# what dedupe removes a document as (`stages.dedupe`)
EXACT_DUPLICATE, NEAR_DUPLICATE = "exact_duplicate", "near_duplicate"

# Where each kind of drop happens in the pipeline, in order: the funnel's steps.
FUNNEL_STEPS = ("bad input", "filters", "decontamination", "exact duplicates", "near duplicates")
DECONTAMINATED = "decontaminated:"  # + the eval set's name: a document holding an eval item (`stages.decontaminate`)


def drop_step(reason: str) -> str:
    """The funnel step a drop reason belongs to (filter reasons look like `gopher_quality:...`)."""
    if reason in BAD_INPUT_REASONS:
        return "bad input"
    if reason.startswith(DECONTAMINATED):
        return "decontamination"
    return {EXACT_DUPLICATE: "exact duplicates", NEAR_DUPLICATE: "near duplicates"}.get(reason, "filters")
