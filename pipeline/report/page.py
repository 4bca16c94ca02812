"""Render the statistics of `pipeline.report.stats` for people: one self-contained report.html (inline CSS and SVG
charts drawn here, no script, nothing fetched, so it reads offline and in a mail attachment) and summary.md.

Every number in a table carries `data-key` (its path in stats.json, as a JSON list) and `data-value` (the
exact value), so tests and scripts can read the page back; with `--compare` the paths whose values differ
between the two builds are highlighted on both sides.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.tasks.process import FILE_SUBSET
from stages.document import FUNNEL_STEPS

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac", "#e15759")
REMOVED_COLOR = "#e8a3a3"
TARGET_COLOR = "#a0a6ad"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SHARD_ROWS_SHOWN = 40  # longer shard lists are in stats.json; the table keeps those with a problem

Key = tuple[str, ...]


class ReportError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- numbers


def fmt_int(n: float) -> str:
    return f"{int(n):,}"


def fmt_share(x: float) -> str:
    return f"{100 * x:.1f}%"


def fmt_float(x: float) -> str:
    return f"{x:.3g}"


COMPACT_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1, ""))
BYTE_UNITS = ((1e12, " TB"), (1e9, " GB"), (1e6, " MB"), (1e3, " kB"), (1, " B"))


def _scaled(x: float, units: tuple) -> str:
    base, suffix = next(((b, s) for b, s in units if abs(x) >= b), units[-1])
    return f"{x / base:.3g}{suffix}"


def fmt_compact(x: float) -> str:
    return _scaled(x, COMPACT_UNITS)


def fmt_bytes(n: float) -> str:
    return _scaled(n, BYTE_UNITS)


def fmt_pow2(n: int) -> str:
    """Log2 bucket edges: 1K is 1024, 1M is 2**20."""
    for shift, suffix in ((30, "G"), (20, "M"), (10, "K")):
        if n >= 1 << shift:
            return f"{n >> shift}{suffix}"
    return str(n)


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def fmt_text(value: object) -> str:
    if isinstance(value, list):
        return "<br>".join(html.escape(str(v)) for v in value)
    return html.escape(str(value))


FORMATS = {
    "int": fmt_int,
    "share": fmt_share,
    "float": fmt_float,
    "compact": fmt_compact,
    "bytes": fmt_bytes,
    "seconds": fmt_seconds,
    "text": fmt_text,
}


def lookup(stats: dict, key: Key) -> object:
    value = stats
    for part in key:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def flatten(value: object, prefix: Key = ()) -> dict[Key, object]:
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in flatten(item, prefix + (name,)).items()}
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def changed_keys(stats: dict, other: dict | None) -> frozenset[Key]:
    if other is None:
        return frozenset()
    a, b = flatten(stats), flatten(other)
    return frozenset(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


@dataclass(slots=True)
class Page:
    """What a section renders from: one build's stats, the paths whose values differ from the other build's,
    and one colour per source name shared by both sides."""

    stats: dict
    changed: frozenset[Key]
    colors: dict[str, str]

    def value(self, key: Key, fmt: str = "int", tag: str = "td", cls: str = "num") -> str:
        """One number (or text) of stats.json, shown formatted and tagged with its path and exact value."""
        value = lookup(self.stats, key)
        text = "–" if value is None else FORMATS[fmt](value)
        classes = f"{cls} changed" if key in self.changed else cls
        return (
            f'<{tag} class="{classes}" data-key="{html.escape(json.dumps(list(key)))}" '
            f'data-value="{html.escape(json.dumps(value))}">{text}</{tag}>'
        )


# ---------------------------------------------------------------------------------------------- charts


@dataclass(slots=True)
class Series:
    name: str
    values: list[float]
    color: str


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _svg(width: int, height: float, body: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height:.0f}" width="100%" '
        f'style="max-width:{width}px" role="img" '
        f'aria-label="{html.escape(label)}">{body}</svg>'
    )


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}">{html.escape(text)}</text>'


def _rect(x: float, y: float, w: float, h: float, color: str, tip: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.2f}" height="{h:.1f}" fill="{color}">'
        f"<title>{html.escape(tip)}</title></rect>"
    )


def _legend(series: list[Series], x: float, y: float) -> str:
    parts = []
    for s in series:
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{s.color}"/>'
            + _text(x + 14, y, s.name, cls="legend")
        )
        x += 26 + 6.5 * len(s.name)
    return "".join(parts)


def _scale(vmax: float, length: float, log: bool) -> tuple:
    """The value -> pixels function and its axis ticks, linear or log10 (from 1: counts below 1 are not drawn;
    a log axis has no 0)."""
    if log:
        top = max(math.ceil(math.log10(max(vmax, 1)) + 1e-9), 1)
        return (lambda v: length * math.log10(v) / top if v >= 1 else 0.0), [10**i for i in range(top + 1)]
    ticks = nice_ticks(vmax)
    return (lambda v: length * v / ticks[-1]), ticks


def _y_grid(ticks: list[float], scale, left: float, right: float, baseline: float, fmt) -> list[str]:
    """Horizontal grid lines with their values on the left, for the vertical charts."""
    parts = []
    for t in ticks:
        y = baseline - scale(t)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" class="grid"/>'
            + _text(left - 4, y + 4, fmt(t), "end", "tick")
        )
    return parts


def hbar_chart(
    labels: list[str],
    series: list[Series],
    *,
    fmt=fmt_compact,
    stacked: bool = False,
    log: bool = False,
    notes: list[str] | None = None,
    width: int = 720,
) -> str:
    """Horizontal bars, one band per label: the series side by side, or stacked. `notes` replace the values
    written after each band."""
    label_w = min(240, 16 + 6.6 * max((len(label) for label in labels), default=4))
    bar_h = 18 if stacked or len(series) == 1 else 12
    band = (bar_h if stacked else bar_h * len(series)) + 8
    top = 26 if len(series) > 1 else 6
    plot_w = width - label_w - 110
    totals = [
        sum(s.values[i] for s in series) if stacked else max(s.values[i] for s in series) for i in range(len(labels))
    ]
    scale, ticks = _scale(max(totals, default=0), plot_w, log)
    height = top + band * len(labels) + 22
    parts = [_legend(series, label_w, 14)] if len(series) > 1 else []
    for t in ticks:
        x = label_w + scale(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{height - 18}" class="grid"/>'
            + _text(x, height - 5, fmt(t), "middle", "tick")
        )
    for i, label in enumerate(labels):
        y = top + i * band
        parts.append(_text(label_w - 6, y + band / 2 + 1, label, "end", "label"))
        x0 = 0.0
        for j, s in enumerate(series):
            v = s.values[i]
            if stacked:
                parts.append(
                    _rect(
                        label_w + scale(x0),
                        y + 4,
                        scale(x0 + v) - scale(x0),
                        bar_h,
                        s.color,
                        f"{label}, {s.name}: {fmt(v)}",
                    )
                )
                x0 += v
            else:
                parts.append(
                    _rect(label_w, y + 4 + j * bar_h, scale(v), bar_h - 2, s.color, f"{label}, {s.name}: {fmt(v)}")
                )
                if notes is None:
                    parts.append(_text(label_w + scale(v) + 4, y + 4 + j * bar_h + bar_h - 4, fmt(v), cls="note"))
        if notes is not None or stacked:
            note = notes[i] if notes is not None else fmt(totals[i])
            parts.append(_text(label_w + scale(totals[i]) + 4, y + band / 2 + 4, note, cls="note"))
    return _svg(width, height, "".join(parts), ", ".join(s.name for s in series))


def columns_chart(
    labels: list[str], series: list[Series], *, fmt=fmt_compact, width: int = 720, height: int = 220
) -> str:
    """Stacked vertical columns, one per label (shards: thousands of them still draw as one shape)."""
    left, top, bottom = 56, 26, 22
    plot_w, plot_h = width - left - 10, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    scale, ticks = _scale(max(totals, default=0), plot_h, False)
    step = plot_w / max(len(labels), 1)
    gap = step * 0.15 if len(labels) < 100 else 0
    parts = [_legend(series, left, 14)] + _y_grid(ticks, scale, left, width - 10, top + plot_h, fmt)
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        y = top + plot_h
        for s in series:
            h = scale(s.values[i])
            y -= h
            parts.append(
                _rect(left + i * step + gap / 2, y, step - gap, h, s.color, f"{label}, {s.name}: {fmt(s.values[i])}")
            )
        if i % every == 0:
            parts.append(_text(left + (i + 0.5) * step, height - 6, label, "middle", "tick"))
    return _svg(width, height, "".join(parts), ", ".join(s.name for s in series))


def step_chart(edges: list[int], series: list[Series], *, width: int = 720, height: int = 240) -> str:
    """Histograms over log2 buckets as outlined steps, each series as a share of its own documents, so sources
    of very different sizes compare by shape."""
    shares = [[v / (sum(s.values) or 1) for v in s.values] for s in series]
    used = [i for i in range(len(edges) - 1) if any(sh[i] for sh in shares)] or [0]
    first, last = used[0], used[-1]
    left, top, bottom = 48, 26, 36
    plot_w, plot_h = width - left - 24, height - top - bottom
    scale, ticks = _scale(max((max(sh[first : last + 1]) for sh in shares), default=0), plot_h, False)
    step = plot_w / (last - first + 1)
    parts = [_legend(series, left, 14)] + _y_grid(
        ticks, scale, left, width - 10, top + plot_h, lambda t: f"{100 * t:.0f}%"
    )
    every = max(1, math.ceil((last - first + 2) / 14))
    for i in range(first, last + 2, every):
        parts.append(_text(left + (i - first) * step, top + plot_h + 14, fmt_pow2(edges[i]), "middle", "tick"))
    for s, sh in zip(series, shares):
        points = [(left, top + plot_h)]
        for i in range(first, last + 1):
            y = top + plot_h - scale(sh[i])
            points += [(left + (i - first) * step, y), (left + (i - first + 1) * step, y)]
        points.append((left + plot_w, top + plot_h))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline points="{path}" fill="{s.color}" fill-opacity="0.15" stroke="{s.color}" '
            f'stroke-width="2"><title>{html.escape(s.name)}</title></polyline>'
        )
    return _svg(width, height, "".join(parts), ", ".join(s.name for s in series))


# ---------------------------------------------------------------------------------------------- sections


def figure(name: str, caption: str, content: str) -> str:
    return f'<figure class="fig" data-figure="{name}">{content}<figcaption>{caption}</figcaption></figure>'


def table(name: str, header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return (
        f'<div class="scroll"><table data-table="{name}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def headline_section(page: Page) -> str:
    h = page.stats["headline"]
    split_parts = " · ".join(f"{html.escape(split)} {fmt_compact(n)}" for split, n in h["tokens_by_split"].items())
    speed = (
        f"process stage {fmt_float(h['text_mb_per_s'])} MB/s of input text"
        if h["text_mb_per_s"]
        else "no process timing"
    )
    build = f"{h['workers']} workers · {speed}" if h["wall_seconds"] else "no build_stats.json"
    ok = h["checks_passed"] == h["checks"]
    cards = [
        ("tokens in shards", page.value(("headline", "tokens"), "compact", "div", "value"), split_parts),
        (
            "documents in shards",
            page.value(("headline", "documents"), "compact", "div", "value"),
            f"{fmt_compact(h['documents_read'])} read",
        ),
        ("documents kept", page.value(("headline", "kept_share"), "share", "div", "value"), "after filters and dedupe"),
        (
            "input read",
            page.value(("headline", "bytes_read"), "bytes", "div", "value"),
            f"{page.stats['provenance']['input_files']} files",
        ),
        (
            "shards",
            page.value(("headline", "shards"), "int", "div", "value"),
            f"{fmt_bytes(h['bytes_on_disk'])} · {page.stats['provenance']['dtype']}",
        ),
        ("build wall time", page.value(("headline", "wall_seconds"), "seconds", "div", "value"), build),
        (
            "checks passed",
            f'<div class="value {"ok" if ok else "fail"}">{h["checks_passed"]} / {h["checks"]}</div>',
            "see Checks below",
        ),
    ]
    warnings = "".join(f'<p class="warning">⚠ {html.escape(w)}</p>' for w in page.stats["warnings"])
    return (
        warnings
        + '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="what">{w}</div>{v}<div class="sub">{s}</div></div>' for w, v, s in cards
        )
        + "</div>"
    )


def funnel_chart(page: Page, name: str) -> str:
    source = page.stats["sources"][name]
    steps = source["funnel"]
    labels = list(steps) + ["in shards (after the mix)"]
    left = [st["left"] for st in steps.values()] + [source["documents_in_shards"]]
    removed = [st["removed"] for st in steps.values()] + [0]
    notes = [f"−{fmt_compact(r)} → {fmt_compact(n)}" if r else fmt_compact(n) for r, n in zip(removed, left)]
    series = [Series("records left", left, page.colors[name]), Series("removed here", removed, REMOVED_COLOR)]
    return f"<div><h4>{html.escape(name)}</h4>{hbar_chart(labels, series, stacked=True, notes=notes, width=560)}</div>"


def subset_label(subset: str) -> str:
    """A subset's name; the bad records that belong to no readable subset get a label that says so."""
    if subset == FILE_SUBSET:
        return f'{html.escape(subset)} <span class="step">bad records in no subset</span>'
    return html.escape(subset)


def funnel_table(page: Page) -> str:
    stats = page.stats
    # bad input gets one column (its reasons are in the quarantine table), every other reason its own
    reasons = [r for r, step in stats["drop_reasons"].items() if step != "bad input"]
    chars = stats["has_build_stats"]
    header = [
        "source / subset",
        "records read",
        'bad input<br><span class="step">records</span>',
        "documents read",
        "bytes read",
    ] + (["chars read"] if chars else [])
    # <wbr>: long reason names may wrap after their underscores and colons, never inside a word
    header += [
        f"{html.escape(r).replace('_', '_<wbr>').replace(':', ':<wbr>')}<br><span "
        f'class="step">{html.escape(stats["drop_reasons"][r])}</span>'
        for r in reasons
    ]
    header += ["kept", "kept %", "tokens kept"] + (["tokens / char"] if chars else [])
    rows = []
    for name, source in stats["sources"].items():
        groups = [("sources", name, f"<th>{html.escape(name)}</th>")]
        groups += [
            ("subsets", key, f'<td class="sub">{subset_label(row["subset"])}</td>')
            for key, row in stats["subsets"].items()
            if row["source"] == name
        ]
        for kind, key, first in groups:
            cells = [
                first,
                page.value((kind, key, "records_read")),
                page.value((kind, key, "dropped_by_step", "bad input")),
                page.value((kind, key, "documents_read")),
                page.value((kind, key, "bytes_read")),
            ]
            cells += [page.value((kind, key, "chars_read"))] if chars else []
            cells += [page.value((kind, key, "dropped", r)) for r in reasons]
            cells += [
                page.value((kind, key, "documents_kept")),
                page.value((kind, key, "kept_share"), "share"),
                page.value((kind, key, "tokens_kept")),
            ]
            cells += [page.value((kind, key, "fertility"), "float")] if chars else []
            rows.append("".join(cells))
    return table("funnel", header, rows)


def funnel_section(page: Page) -> str:
    q, names = page.stats["quarantine"], list(page.stats["sources"])
    charts = "".join(funnel_chart(page, name) for name in names)
    quarantine = table(
        "quarantine",
        ["bad-input reason"] + [html.escape(n) for n in names] + ["all"],
        [
            f"<td>{html.escape(r)}</td>"
            + "".join(page.value(("sources", n, "dropped", r)) for n in names)
            + page.value(("quarantine", "by_reason", r))
            for r in q["by_reason"]
        ]
        + [
            f"<th>all, in {html.escape(q['path'])}</th>"
            + "".join(page.value(("sources", n, "dropped_by_step", "bad input")) for n in names)
            + page.value(("quarantine", "records"))
        ],
    )
    caption = (
        "Records left after each step, per source; red: what the step removed. Records read = documents read + bad "
        "input "
        "records, as in the table."
    )
    return (
        figure("funnel", caption, f'<div class="multiples">{charts}</div>')
        + funnel_table(page)
        + "<h3>Quarantined input</h3>"
        + quarantine
        + dropped_examples(page)
    )


def dropped_examples(page: Page) -> str:
    """A few documents each filter and each dedupe step removed, their start escaped (dropped_samples.jsonl
    holds them); a duplicate beside the document kept in its place."""
    samples = page.stats.get("dropped_samples") or []
    intro = (
        "<h3>Examples of removed documents</h3><p>The first documents each filter removed, per source, and a few each "
        "dedupe "
        "step removed, across the subsets, each beside the document kept in its place (the start of each; "
        "<code>dropped_samples.jsonl</code> beside the manifest holds them and more).</p>"
    )
    if not samples:
        return (
            intro + '<p class="missing">No examples: nothing was filtered or deduplicated, '
            "or the build left no dropped_samples.jsonl.</p>"
        )
    filtered = [s for s in samples if "kept_doc" not in s and "match" not in s]  # decontaminated: their own section
    duplicates = [s for s in samples if "kept_doc" in s]
    rows = [
        f"<td>{html.escape(s['reason'])}<br><span "
        f'class="step">{html.escape(s["step"])}</span></td><td>{html.escape(s["source"])} / '
        f"{subset_label(s['subset'])}</td>"
        f'<td class="text">{html.escape(s["doc"])}</td>{_sample_cell(s["text"])}'
        for s in filtered
    ]
    # Each document's name above its text, so that the removed and the kept one fit side by side in the page.
    pairs = [
        f"<td>{html.escape(s['step'])}</td><td>{html.escape(s['source'])} / {subset_label(s['subset'])}</td>"
        + _sample_cell(s["text"], s["doc"])
        + (
            _sample_cell(s["kept_text"], s["kept_doc"]) + f'<td class="num">{fmt_float(s["similarity"])}</td>'
            if "kept_text" in s
            else f'<td class="sample"><div class="doc">{html.escape(s["kept_doc"])}</div>'
            '<span class="missing">the same text</span></td><td class="num">1</td>'
        )
        for s in duplicates
    ]
    return (
        intro
        + (table("dropped-samples", ["reason", "source / subset", "document", "text (start)"], rows) if rows else "")
        + (
            table(
                "duplicate-samples",
                [
                    "step",
                    "source / subset",
                    "removed document (text start)",
                    "kept document (text start)",
                    "estimated Jaccard",
                ],
                pairs,
            )
            if pairs
            else ""
        )
    )


def decontamination_section(page: Page) -> str:
    """Per eval set: its rule and sha256, the documents dropped or flagged, the items found most often, and a few
    matches with their span beside the item (decontamination.json beside the manifest holds every one)."""
    d = page.stats["decontamination"]
    counts = ("items", "ngrams", "documents", "dropped", "flagged", "items_matched")
    header = [
        "eval set",
        "sha256",
        "rule",
        "action",
        "items",
        "n-grams",
        "documents matched",
        "dropped",
        "flagged",
        "items found",
    ]
    rows = [
        f"<th>{html.escape(s['name'])}</th><td><code>{s['sha256'][:16]}</code></td>"
        f"<td>{s['rule']['n']} {html.escape(s['rule']['unit'])}, share ≥ {fmt_float(s['rule']['min_share'])}</td>"
        f"<td>{html.escape(s['action'])}</td>" + "".join(f'<td class="num">{fmt_int(s[k])}</td>' for k in counts)
        for s in d["sets"]
    ]
    shown = DECONTAMINATION_ITEMS_SHOWN
    items = [
        f"<td>{html.escape(s['name'])}</td><td>{html.escape(i['item'])}</td>"
        f'<td class="num">{fmt_int(i["documents"])}</td>' + _sample_cell(i["text"])
        for s in d["sets"]
        for i in s["matched_items"][:shown]
    ]
    samples = [
        f'<td>{html.escape(x["eval_set"])}<br><span class="step">{html.escape(x["action"])}</span></td>'
        + _sample_cell(x["text"], x["doc"])
        + f'<td class="sample">{html.escape(x["match"])}</td>'
        + _sample_cell(x["item_text"], x["item"])
        for s in d["sets"]
        for x in s["samples"][:shown]
    ]
    intro = (
        f"<p>Documents holding an n-gram of an eval item, per set (<code>{html.escape(d['path'])}</code> beside the "
        "manifest lists every matched item and every flagged document).</p>"
    )
    found = (
        table("decontamination-items", ["eval set", "item", "documents", "item text (start)"], items)
        if items
        else '<p class="missing">No item was found.</p>'
    )
    examples = (
        "<h3>Examples</h3>"
        + table("decontamination-samples", ["eval set", "document (around the match)", "matched span", "item"], samples)
        if samples
        else ""
    )
    return intro + table("decontamination", header, rows) + "<h3>Items found most often</h3>" + found + examples


def _sample_cell(text: str, doc: str | None = None) -> str:
    name = f'<div class="doc">{html.escape(doc)}</div>' if doc else ""
    return f'<td class="sample">{name}{html.escape(text.replace(chr(10), " ↵ "))}</td>'


def mix_section(page: Page) -> str:
    stats = page.stats
    names, splits = list(stats["sources"]), list(stats["splits"])
    series = [Series("target", [stats["mix"]["target"].get(n, 0.0) for n in names], TARGET_COLOR)]
    series += [
        Series(f"achieved, {s}", [stats["mix"]["achieved"][s].get(n, 0.0) for n in names], PALETTE[i % len(PALETTE)])
        for i, s in enumerate(splits)
    ]
    header = (
        ["source", "weight", "target"]
        + [h for s in splits for h in (f"tokens, {html.escape(s)}", f"share, {html.escape(s)}")]
        + ["epochs", "tokens kept before the mix"]
    )
    rows = []
    for n in names:
        cells = [
            f"<th>{html.escape(n)}</th>",
            page.value(("sources", n, "weight"), "float"),
            page.value(("mix", "target", n), "share"),
        ]
        cells += [
            c
            for s in splits
            for c in (page.value(("splits", s, "tokens_by_source", n)), page.value(("mix", "achieved", s, n), "share"))
        ]
        rows.append(
            "".join(cells + [page.value(("sources", n, "epochs"), "float"), page.value(("sources", n, "tokens_kept"))])
        )
    rows.append(
        "<th>all</th><td></td><td></td>"
        + "".join(page.value(("splits", s, "tokens")) + "<td></td>" for s in splits)
        + "<td></td><td></td>"
    )
    chart = hbar_chart(names, series, fmt=fmt_share)
    policy = html.escape(stats["mix"]["policy"])
    subset_rows = [
        f"<th>{html.escape(row['source'])}</th><td>{subset_label(row['subset'])}</td>"
        + page.value(("subsets", key, "tokens_kept"))
        + page.value(("subsets", key, "train_tokens"))
        + page.value(("subsets", key, "train_share"), "share")
        for key, row in stats["subsets"].items()
        if row["tokens_kept"]
    ]
    subsets = (
        "<h3>Subsets in the training tokens</h3><p>Each subset's tokens in the train split, estimated from its share "
        "of its "
        "source's kept tokens: the mix samples a source's documents uniformly (the shards record sources, not "
        "subsets).</p>"
        + table(
            "subset-shares",
            ["source", "subset", "tokens kept", "train tokens (est.)", "share of train tokens"],
            subset_rows,
        )
    )
    return (
        figure(
            "mix",
            f"Token share per source: the recipe's target against what each split holds (policy: {policy}).",
            chart,
        )
        + table("mix", header, rows)
        + subsets
    )


def budget_section(page: Page) -> str:
    b = page.stats["budget"]
    intro = (
        f"<p>Training on {page.value(('budget', 'tokens'), 'compact', 'span', 'inline')} tokens "
        "(<code>--budget</code>) at the achieved "
        f"mix passes {page.value(('budget', 'passes'), 'float', 'span', 'inline')} times over the train split's "
        f"{page.value(('budget', 'train_tokens'), 'compact', 'span', 'inline')} tokens. Epochs: how many times each "
        "source's and subset's unique "
        "kept training tokens (after filters and dedupe, validation left out) would be seen; above about 4, repeated "
        "data starts "
        "to cost quality.</p>"
    )
    rows = []
    for name in b["sources"]:
        rows.append(
            f"<th>{html.escape(name)}</th><td></td>"
            + "".join(
                page.value(("budget", "sources", name, k), f)
                for k, f in (("unique_tokens", "compact"), ("tokens", "compact"), ("epochs", "float"))
            )
        )
        rows += [
            f'<td></td><td class="sub">{subset_label(page.stats["subsets"][key]["subset"])}</td>'
            + "".join(
                page.value(("budget", "subsets", key, k), f)
                for k, f in (("unique_tokens", "compact"), ("tokens", "compact"), ("epochs", "float"))
            )
            for key, row in page.stats["subsets"].items()
            if row["source"] == name and row["tokens_kept"]
        ]
    return intro + table(
        "budget", ["source", "subset", "unique training tokens", "tokens in the budget", "epochs"], rows
    )


NO_BUILD_STATS = '<p class="missing">Not available: the build left no build_stats.json beside the manifest.</p>'


def length_figure(page: Page, name: str, kind: str, caption: str, missing: str) -> str:
    dist = page.stats["distributions"]
    hists = dist[kind]
    if not hists:
        return figure(name, caption, missing)
    series = [Series(src, counts, page.colors[src]) for src, counts in hists.items()]
    return figure(name, caption, step_chart(dist["length_edges"], series, width=560))


def fertility_figure(page: Page) -> str:
    stats = page.stats
    labels, values = [], []
    for name, source in stats["sources"].items():
        if source["fertility"] is not None:
            labels.append(name)
            values.append(source["fertility"])
            mine = [
                (row["subset"], row["fertility"])
                for row in stats["subsets"].values()
                if row["source"] == name and row["fertility"] is not None
            ]
            labels += [f"{name} / {subset}" for subset, _ in mine]
            values += [f for _, f in mine]
    caption = "Tokenizer fertility: tokens per character of the kept documents, per source and per subset / language."
    if not labels:
        return figure("fertility", caption, NO_BUILD_STATS)
    return figure(
        "fertility",
        caption,
        hbar_chart(labels, [Series("tokens per character", values, PALETTE[0])], fmt=fmt_float, width=560),
    )


def cluster_groups(cluster_sizes: dict[str, int]) -> tuple[list[str], list[int]]:
    """Near-duplicate cluster sizes in groups 2, 3, 4–7, 8–15, ... (a long tail of single large clusters)."""
    groups: dict[int, int] = {}
    for size, count in cluster_sizes.items():
        low = int(size) if int(size) < 4 else 1 << (int(size).bit_length() - 1)
        groups[low] = groups.get(low, 0) + count
    labels = [str(low) if low < 4 else f"{low}–{2 * low - 1}" for low in sorted(groups)]
    return labels, [groups[low] for low in sorted(groups)]


def cluster_documents(cluster_sizes: dict[str, int]) -> list[int]:
    """Documents in the clusters of each group of `cluster_groups`."""
    groups: dict[int, int] = {}
    for size, count in cluster_sizes.items():
        low = int(size) if int(size) < 4 else 1 << (int(size).bit_length() - 1)
        groups[low] = groups.get(low, 0) + int(size) * count
    return [groups[low] for low in sorted(groups)]


def duplicates_figure(page: Page) -> str:
    dist = page.stats["distributions"]
    caption = (
        "Duplicate clusters by size: each bar counts the clusters of that many documents (log scale); all but one "
        "document of a cluster is removed."
    )
    if dist["exact_removed"] is None:
        return figure("duplicates", caption, NO_BUILD_STATS)
    labels, counts = cluster_groups(dist["duplicate_clusters"])
    removed = (
        f"<p>Removed: {page.value(('distributions', 'exact_removed'), tag='span', cls='inline')} exact duplicates, "
        f"{page.value(('distributions', 'near_removed'), tag='span', cls='inline')} near duplicates.</p>"
    )
    documents = cluster_documents(dist["duplicate_clusters"])
    notes = [f"{fmt_compact(n)} clusters · {fmt_compact(d)} documents" for n, d in zip(counts, documents)]
    chart = (
        hbar_chart(
            [f"{label} documents" for label in labels],
            [Series("clusters", counts, PALETTE[3])],
            fmt=fmt_compact,
            log=True,
            notes=notes,
            width=560,
        )
        if labels
        else "<p>No clusters.</p>"
    )
    return figure("duplicates", caption, removed + chart + similarity_chart(dist.get("removed_similarity")))


def similarity_chart(hist: dict | None) -> str:
    """Cluster members by estimated Jaccard with the document kept in their place: what the verify threshold did."""
    if not hist or not any(hist["removed"]) and not any(hist["kept"]):
        return ""
    first = min(i for i, (r, k) in enumerate(zip(hist["removed"], hist["kept"])) if r or k)
    labels = [f"{e:.2f}" for e in hist["edges"][first:-1]]
    series = [
        Series("removed", hist["removed"][first:], REMOVED_COLOR),
        Series("kept by verification", hist["kept"][first:], PALETTE[0]),
    ]
    return "<p>Candidates by estimated Jaccard with the document kept in their place:</p>" + columns_chart(
        labels, series, width=560, height=180
    )


def distributions_section(page: Page) -> str:
    return (
        '<div class="multiples">'
        + length_figure(
            page,
            "token-length",
            "tokens_in_shards",
            "Document length in tokens as the shards hold them, per source (log2 buckets; share of the source's "
            "documents).",
            '<p class="missing">The shards hold no documents.</p>',
        )
        + length_figure(
            page,
            "char-length",
            "chars_kept",
            "Document length in characters of the kept documents, per source (log2 buckets; share of the source's "
            "documents).",
            NO_BUILD_STATS,
        )
        + fertility_figure(page)
        + duplicates_figure(page)
        + "</div>"
    )


def _percentile_row(split: str, tokens: list[int]) -> str:
    ordered = sorted(tokens)
    cells = [fmt_int(ordered[0]), fmt_int(ordered[len(ordered) // 2]), fmt_int(ordered[-1])] if ordered else ["–"] * 3
    return f'<th>{html.escape(split)}</th><td class="num">{len(ordered)}</td>' + "".join(
        f'<td class="num">{c}</td>' for c in cells
    )


def shards_section(page: Page) -> str:
    stats = page.stats
    shards, names = stats["shards"], list(stats["sources"])
    series = [Series(n, [row["tokens_by_source"].get(n, 0) for row in shards.values()], page.colors[n]) for n in names]
    labels = [Path(b).stem for b in shards]
    chart = figure(
        "shards",
        f"Tokens per shard by source, in manifest order ({html.escape(stats['provenance']['dtype'])} token ids).",
        columns_chart(labels, series),
    )
    balance = table(
        "balance",
        ["split", "shards", "fewest tokens", "median", "most tokens"],
        [
            _percentile_row(split, [r["tokens"] for r in shards.values() if r["split"] == split])
            for split in stats["splits"]
        ],
    )
    problem = [b for b, r in shards.items() if r["idx_status"] != "ok" or r["bin_status"] not in ("ok", "size ok")]
    shown = list(dict.fromkeys(problem + list(shards)[:SHARD_ROWS_SHOWN]))
    header = (
        ["shard", "split", "documents", "tokens"]
        + [f"tokens, {html.escape(n)}" for n in names]
        + ["bytes", "index sha256", "token file"]
    )
    rows = []
    for b in shown:
        cells = [
            f"<td>{html.escape(b)}</td><td>{html.escape(shards[b]['split'])}</td>",
            page.value(("shards", b, "documents")),
            page.value(("shards", b, "tokens")),
        ]
        cells += [page.value(("shards", b, "tokens_by_source", n)) for n in names] + [
            page.value(("shards", b, "bin_bytes"), "bytes")
        ]
        cells += [
            page.value(("shards", b, key), "text", cls="ok" if shards[b][key] in ("ok", "size ok") else "fail")
            for key in ("idx_status", "bin_status")
        ]
        rows.append("".join(cells))
    more = (
        f"<p>{len(shards) - len(shown)} more shards are listed in stats.json.</p>" if len(shards) > len(shown) else ""
    )
    return chart + balance + table("shards", header, rows) + more


def build_section(page: Page) -> str:
    build = page.stats["build"]
    stages = build["stages"]
    if not stages:
        return '<p class="missing">The manifest records no stages.</p>'
    chart = hbar_chart(
        list(stages), [Series("seconds", [s["seconds"] for s in stages.values()], PALETTE[4])], fmt=fmt_seconds
    )
    header = [
        "stage",
        "seconds",
        "tasks",
        "re-used",
        "bytes read",
        "documents",
        "MB/s of input text",
        "documents/s",
        "task CPU s",
        "largest task's peak RSS (MiB)",
        "largest task's input",
        "made by the build of",
    ]
    rows = [
        f"<th>{html.escape(name)}</th>"
        + "".join(
            page.value(("build", "stages", name, k), fmt)
            for k, fmt in (
                ("seconds", "float"),
                ("tasks", "int"),
                ("reused", "int"),
                ("input_bytes", "bytes"),
                ("documents", "int"),
                ("text_mb_per_s", "float"),
                ("documents_per_s", "compact"),
                ("cpu_seconds", "float"),
                ("peak_rss_mib", "float"),
            )
        )
        + page.value(("build", "stages", name, "largest_task"), "text", cls="text")
        + page.value(("build", "stages", name, "made_at"), "text")
        for name in stages
    ]
    workers = (
        f"<p>{page.value(('build', 'workers'), tag='span', cls='inline')} workers, "
        f"{page.value(('build', 'wall_seconds'), 'seconds', 'span', 'inline')} wall time.</p>"
    )
    note = (
        "<p>Stages in the order they run. Each task's peak RSS is its worker process's high-water mark during the "
        "task; "
        "a stage's figure is its largest task's, the memory a node needs per worker for it. "
        "The speed is the one the build prints: MB of input text (decoded, before filters) per "
        "second of the process stage, the only stage that reads text. A stage whose outputs this build re-used (all "
        "its "
        "tasks) shows the times of the build that made them, named in the last column.</p>"
    )
    return workers + figure("stages", "Wall time per stage.", chart) + note + table("stages", header, rows)


def provenance_section(page: Page) -> str:
    p = page.stats["provenance"]
    keys = [("manifest",), ("recipe",), ("recipe_sha256",), ("tool_version",), ("created_at",), ("dtype",)]
    keys += (
        [("tokenizer", k) for k in p["tokenizer"]]
        + [("input_uris", name) for name in p["input_uris"]]
        + [("input_files",), ("quarantine", "path")]
    )
    rows = [
        f"<th>{html.escape(' '.join(k).replace('_', ' '))}</th>" + page.value(("provenance",) + k, "text", cls="text")
        for k in keys
    ]
    return table("provenance", ["what", "value"], rows)


def checks_section(page: Page) -> str:
    items = []
    for name, c in page.stats["checks"].items():
        mark, cls = ("✓", "ok") if c["ok"] else ("✗", "fail")
        items.append(
            f'<li class="{cls}"><span class="mark">{mark}</span> <b>{html.escape(name)}</b>: '
            f"{html.escape(c['detail'])}</li>"
        )
    return f'<ul class="checks">{"".join(items)}</ul>'


SECTIONS = (
    ("headline", "At a glance", headline_section),
    ("funnel", "The funnel: from records read to documents kept", funnel_section),
    ("decontamination", "Decontamination: eval items found in the corpus", decontamination_section),  # eval sets only
    ("mix", "The mix: achieved against target", mix_section),
    ("budget", "Token budget: epochs per source at the achieved mix", budget_section),
    ("distributions", "Distributions", distributions_section),
    ("shards", "Shards: size, balance and checksums", shards_section),
    ("build", "The build: time and throughput per stage", build_section),
    ("provenance", "Provenance", provenance_section),
    ("checks", "Checks", checks_section),
)
DECONTAMINATION_ITEMS_SHOWN = 10  # per set: the items found most often, and examples
# What the differences tables of --compare list (the other paths are highlighted in place).
DIFFERENCE_PREFIXES = ("headline", "sources", "subsets", "mix", "splits", "budget", "build", "provenance")
# Figures that change from run to run on the same data: listed apart from the data's differences.
TIMING_HEADLINE = frozenset({"wall_seconds", "workers", "text_mb_per_s"})
# Words for the field names of stats.json; a name not here reads with its underscores as spaces.
FIELD_WORDS = {
    "text_mb_per_s": "MB/s of input text",
    "documents_per_s": "documents/s",
    "kept_share": "share of documents kept",
    "dropped_by_step": "removed by",
    "dropped": "removed by",
    "train_share": "share of train tokens",
    "train_tokens": "train tokens",
    "tokens_by_source": "tokens of",
    "documents_by_source": "documents of",
    "wall_seconds": "build wall time (s)",
    "bytes_read": "bytes of text read",
    "input_bytes": "bytes read",
    "peak_rss_mib": "largest task's peak RSS (MiB)",
    "largest_task": "largest task's input",
}


def is_timing(key: Key) -> bool:
    return key[0] == "build" or (key[0] == "headline" and key[-1] in TIMING_HEADLINE)


def readable(key: Key) -> str:
    """A stats.json path in words: ("sources", "slimpajama", "documents_kept") -> "slimpajama: documents kept"."""

    def words(part: str) -> str:
        return FIELD_WORDS.get(part, part.replace("_", " "))

    head, rest = key[0], list(key[1:])
    if head in ("sources", "subsets") and rest:
        return f"{rest[0]}: " + " ".join(words(p) if i == 0 else p for i, p in enumerate(rest[1:]))
    if head == "splits" and rest:
        return f"{rest[0]} split: " + " ".join(words(p) if i == 0 else p for i, p in enumerate(rest[1:]))
    if head == "mix" and len(rest) == 2 and rest[0] == "target":
        return f"target share of {rest[1]}"
    if head == "mix" and len(rest) == 3 and rest[0] == "achieved":
        return f"{rest[1]} split: share of {rest[2]}"
    if head == "build" and len(rest) == 3 and rest[0] == "stages":
        return f"{rest[1]} stage: {words(rest[2])}"
    if head == "budget" and len(rest) >= 3:
        return f"budget, {rest[1]}: {words(rest[2])}"
    if head == "headline":
        return " ".join(map(words, rest))
    return f"{words(head)}: " + " ".join(map(words, rest))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _diff_value(value: object, sign: str = "") -> str:
    """A value of the differences table: whole numbers with separators, small fractions to 3 digits."""
    if value is None:
        return "–"
    if not _is_number(value):
        return fmt_text(value)
    return f"{value:{sign},.0f}" if isinstance(value, int) or abs(value) >= 1000 else f"{value:{sign}.3g}"


def difference_rows(stats: dict, other: dict, timings: bool = False) -> list[tuple[str, object, object, str]]:
    """(what, A, B, B - A) for each differing value under DIFFERENCE_PREFIXES, in their order: the data's
    differences, or with `timings` those of the build's time and speed."""
    keys = [
        k
        for k in changed_keys(stats, other)
        if k[0] in DIFFERENCE_PREFIXES
        and k != ("provenance", "manifest")
        and "funnel" not in k
        and is_timing(k) == timings
    ]
    rows = []
    for key in sorted(keys, key=lambda k: (DIFFERENCE_PREFIXES.index(k[0]), k)):
        a, b = lookup(stats, key), lookup(other, key)
        change = (
            _diff_value(b - a, "+") + (f" ({(b - a) / a:+.1%})" if a else "") if _is_number(a) and _is_number(b) else ""
        )
        rows.append((readable(key), a, b, change))
    return rows


def differences_section(stats: dict, other: dict) -> str:
    def cell(value: object) -> str:
        return (
            f'<td class="{"num" if value is None or _is_number(value) else "text"} changed">{_diff_value(value)}</td>'
        )

    def rows(timings: bool) -> list[str]:
        return [
            f'<td>{html.escape(what)}</td>{cell(a)}{cell(b)}<td class="num">{html.escape(change)}</td>'
            for what, a, b, change in difference_rows(stats, other, timings)
        ]

    data, timing = rows(False), rows(True)
    parts = [
        "<h3>The data</h3>",
        table("differences", ["what", "A", "B", "B − A"], data)
        if data
        else "<p>The two builds agree on every figure of the data.</p>",
        "<h3>Time and speed</h3><p>These differ from run to run on the same data (machine load, workers, "
        "start-up).</p>",
        table("timing-differences", ["what", "A", "B", "B − A"], timing) if timing else "<p>No timing differs.</p>",
    ]
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;margin:0;
background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:0 0 12px}h3{font-size:15px;margin:18px 0 6px}
h4{margin:6px 0 2px;font-size:14px}
.meta{color:#59636e;margin-bottom:18px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px 20px;margin:16px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
.card{border:1px solid #d8dee4;border-radius:8px;padding:10px 12px;background:#fbfcfd}
.card .what{color:#59636e;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:26px;font-weight:650;margin:2px 0}.card .sub{color:#59636e;font-size:12px}
.value.ok,li.ok .mark,td.ok{color:#1a7f37}.value.fail,li.fail .mark,td.fail{color:#cf222e}
.multiples{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:8px 24px}
figure{margin:8px 0 16px}figcaption{color:#59636e;font-size:12.5px;margin-top:4px}
svg text{font-size:11.5px;fill:#1f2328}svg text.tick,svg text.note{fill:#59636e;font-size:10.5px}
svg line.grid{stroke:#e6e9ec;stroke-width:1}
.scroll{overflow-x:auto;margin:6px 0 12px}
table{border-collapse:collapse;font-size:12.5px}
th,td{padding:3px 9px;border-bottom:1px solid #eaeef2;text-align:left;white-space:nowrap}
thead th{background:#f0f2f5;font-weight:600;vertical-align:bottom;white-space:normal;max-width:120px}
td.num,td.num span{text-align:right;font-variant-numeric:tabular-nums}td.sub{padding-left:22px;color:#3d444d}
td.text{white-space:normal;word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
.changed{background:#fff1b8}.inline{font-weight:600}
.pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:20px}
.pair .multiples{grid-template-columns:1fr}
.run-label{font-weight:600;color:#59636e;margin-bottom:6px;word-break:break-all}
th .step{font-weight:400;color:#59636e;font-size:11px}
.missing{color:#59636e;font-style:italic}
td.sample{white-space:normal;word-break:break-word;min-width:360px;max-width:640px;font-family:ui-monospace,monospace;font-size:11.5px}
table[data-table=duplicate-samples] td.sample{min-width:300px;max-width:400px}
td.sample .doc{font-weight:600;color:#3d444d;word-break:break-all;margin-bottom:2px}
.warning{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:0 0 10px}
ul.checks{list-style:none;padding:0;margin:0}ul.checks li{padding:3px 0}.mark{font-weight:700}
"""


def _page_header(stats: dict, other: dict | None) -> str:
    p = stats["provenance"]
    if other is None:
        return (
            f'<h1>Corpus report: {html.escape(p["recipe"])}</h1><div class="meta">{html.escape(p["manifest"])} · built '
            f"{html.escape(p['created_at'])} · tokenmill {html.escape(p['tool_version'])}</div>"
        )
    q = other["provenance"]
    return (
        f"<h1>Corpus comparison: {html.escape(p['recipe'])} (A) against {html.escape(q['recipe'])} (B)</h1>"
        f'<div class="meta">A: {html.escape(p["manifest"])}<br>B: {html.escape(q["manifest"])}<br>'
        "Highlighted: figures that differ between the two builds.</div>"
    )


def source_colors(*runs: dict) -> dict[str, str]:
    names = list(dict.fromkeys(name for run in runs for name in run["sources"]))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def render_html(stats: dict, other: dict | None = None) -> str:
    """The whole report as one HTML document; with `other`, both builds side by side plus their differences."""
    runs = [stats] if other is None else [stats, other]
    changed, colors = changed_keys(stats, other), source_colors(*runs)
    pages = [Page(run, changed, colors) for run in runs]
    parts = [_page_header(stats, other)]
    if other is not None:
        parts.append(f'<section id="differences"><h2>What differs</h2>{differences_section(stats, other)}</section>')
    for section_id, title, render in SECTIONS:
        if section_id == "decontamination" and not all(run.get("decontamination") for run in runs):
            continue
        if other is None:
            inner = render(pages[0])
        else:
            inner = (
                '<div class="pair">'
                + "".join(
                    f'<div class="run"><div class="run-label">{side}: '
                    f"{html.escape(p.stats['provenance']['manifest'])}</div>{render(p)}</div>"
                    for side, p in zip("AB", pages)
                )
                + "</div>"
            )
        parts.append(f'<section id="{section_id}"><h2>{title}</h2>{inner}</section>')
    title = html.escape(f"tokenmill report: {stats['provenance']['recipe']}")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n"
    )


def _summary_lines(stats: dict) -> list[str]:
    h, p = stats["headline"], stats["provenance"]
    splits = ", ".join(f"{split} {fmt_int(n)}" for split, n in h["tokens_by_split"].items())
    lines = [
        f"# Corpus report: {p['recipe']}",
        "",
        f"`{p['manifest']}`, built {p['created_at']} by tokenmill {p['tool_version']}.",
        "",
        "| | |",
        "|---|---|",
        f"| tokens in shards | {fmt_int(h['tokens'])} ({splits}) |",
        f"| documents in shards | {fmt_int(h['documents'])} |",
        f"| documents kept | {fmt_share(h['kept_share']) if h['kept_share'] is not None else '–'} of "
        f"{fmt_int(h['documents_read'])} read |",
        f"| input read | {fmt_bytes(h['bytes_read'])} in {p['input_files']} files |",
        f"| shards | {h['shards']} ({p['dtype']}, {fmt_bytes(h['bytes_on_disk'])}) |",
        "| build | "
        + (f"{fmt_seconds(h['wall_seconds'])}, {h['workers']} workers" if h["wall_seconds"] else "no build_stats.json")
        + " |",
        f"| checks | {h['checks_passed']} of {h['checks']} passed |",
        "",
        "## Funnel (documents)",
        "",
        f"| source | records read | {' | '.join(('bad input records',) + FUNNEL_STEPS[1:])} | kept | tokens kept | "
        "tokens in shards |",
        "|---|" + "---:|" * (len(FUNNEL_STEPS) + 4),
    ]
    lines[2:2] = [f"> **Warning:** {w}" for w in stats["warnings"]] + ([""] if stats["warnings"] else [])
    for name, s in stats["sources"].items():
        removed = [fmt_int(st["removed"]) for st in list(s["funnel"].values())[1:]]
        lines.append(
            f"| {name} | {fmt_int(s['records_read'])} | {' | '.join(removed)} | {fmt_int(s['documents_kept'])} | "
            f"{fmt_int(s['tokens_kept'])} | {fmt_int(s['tokens_in_shards'])} |"
        )
    lines += [
        "",
        "## Mix (token share)",
        "",
        "| source | target | " + " | ".join(stats["splits"]) + " |",
        "|---|" + "---:|" * (1 + len(stats["splits"])),
    ]
    for name in stats["sources"]:
        achieved = [fmt_share(stats["mix"]["achieved"][split].get(name, 0.0)) for split in stats["splits"]]
        lines.append(f"| {name} | {fmt_share(stats['mix']['target'].get(name, 0.0))} | {' | '.join(achieved)} |")
    b = stats["budget"]
    lines += [
        "",
        f"## Token budget: {fmt_compact(b['tokens'])} tokens, {_diff_value(b['passes'])} passes over the train split",
        "",
        "| source | unique training tokens | epochs |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {fmt_int(r['unique_tokens'])} | {_diff_value(r['epochs'])} |" for name, r in b["sources"].items()
    ]
    lines += ["", "## Checks", ""] + [
        f"- {'✓' if c['ok'] else '✗'} {name}: {c['detail']}" for name, c in stats["checks"].items()
    ]
    return lines


def render_summary(stats: dict, other: dict | None = None) -> str:
    """summary.md: the headline numbers, funnel, mix and checks; with `other`, also what differs."""
    lines = _summary_lines(stats)
    if other is not None:
        lines += ["", f"## Compared with `{other['provenance']['manifest']}` (B)"]
        for title, timings in (("The data", False), ("Time and speed (these vary from run to run)", True)):
            lines += ["", f"### {title}", "", "| what | A | B | B − A |", "|---|---:|---:|---:|"]
            lines += [
                f"| {what} | {_diff_value(a)} | {_diff_value(b)} | {change} |"
                for what, a, b, change in difference_rows(stats, other, timings)
            ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- pictures


def chromium_command(user_data_dir: Path) -> list[str]:
    """Headless Chromium with a throwaway profile and nothing that reaches the network."""
    exe = shutil.which("chromium")
    if exe is None:
        raise ReportError("chromium is not installed; on Debian: `apt-get install -y chromium`")
    return [exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]


PROBE = '<script>document.body.setAttribute("data-page-height", document.documentElement.scrollHeight)</script></body>'
MAX_SCREENSHOT_HEIGHT = 30000  # pixels; a longer page (thousands of shards, a comparison) is cut there


def page_height(html_path: Path, width: int) -> int:
    """The height in pixels of the whole page at `width`: measured by Chromium on a copy of the page with one
    line of script added (the report itself has none)."""
    with tempfile.TemporaryDirectory(prefix="tokenmill-chromium-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(Path(html_path).read_text().replace("</body>", PROBE, 1))
        command = chromium_command(Path(tmp) / "profile") + [
            f"--window-size={width},1000",
            "--dump-dom",
            probe.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    found = re.search(r'data-page-height="(\d+)"', done.stdout)
    if done.returncode != 0 or not found:
        raise ReportError(f"chromium could not measure {html_path} (exit {done.returncode}): {done.stderr[-800:]}")
    return int(found.group(1))


def screenshot(html_path: Path, png_path: Path, *, width: int = 1280, height: int | None = None) -> None:
    """A PNG of the report as a browser shows it at `width`: the whole page (up to MAX_SCREENSHOT_HEIGHT), or
    its top `height` pixels."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    height = height or min(page_height(html_path, width), MAX_SCREENSHOT_HEIGHT)
    with tempfile.TemporaryDirectory(prefix="tokenmill-chromium-") as profile:
        command = chromium_command(Path(profile)) + [
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            Path(html_path).resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not png_path.exists():
        raise ReportError(
            f"chromium could not take a screenshot of {html_path} (exit {done.returncode}): {done.stderr[-800:]}"
        )
