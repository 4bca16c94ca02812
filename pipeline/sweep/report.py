"""The sweep's report page, in the statistics report's style (its CSS, colours, charts and tables from
`pipeline.report.page`): one self-contained report.html with inline SVG, nothing fetched.

Sections: at a glance (proxies, fit quality), each domain's loss against its weight, predicted (leave-one-out)
against measured, the proposed mix against the base with the predicted losses and gains and their spread, and
every proxy's weights and losses. Every number in a table carries `data-key` (its path in sweep.json) and
`data-value`, as the statistics report's do.
"""

from __future__ import annotations

import html
import json

from pipeline.report.page import (
    CSS,
    PALETTE,
    TARGET_COLOR,
    Series,
    _svg,
    _text,
    figure,
    fmt_share,
    hbar_chart,
    nice_ticks,
    table,
)


def _num(key: list, value: float, text: str) -> str:
    return (
        f'<td class="num" data-key=\'{html.escape(json.dumps(key))}\' data-value="{value!r}">{html.escape(text)}</td>'
    )


def scatter_chart(
    points: list[tuple[float, float, str, str]],
    *,
    x_label: str,
    y_label: str,
    diagonal: bool = False,
    width: int = 480,
    height: int = 300,
) -> str:
    """Points (x, y, colour, tip) on linear axes fitted to the data; `diagonal` draws y = x."""
    left, top, bottom, right = 56, 12, 40, 12
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo_x, hi_x = (min(xs + ys), max(xs + ys)) if diagonal else (min(xs), max(xs))
    lo_y, hi_y = (lo_x, hi_x) if diagonal else (min(ys), max(ys))
    pad_x, pad_y = (hi_x - lo_x) * 0.08 or 0.05, (hi_y - lo_y) * 0.08 or 0.05
    lo_x, hi_x, lo_y, hi_y = lo_x - pad_x, hi_x + pad_x, lo_y - pad_y, hi_y + pad_y
    pw, ph = width - left - right, height - top - bottom
    sx = lambda v: left + pw * (v - lo_x) / (hi_x - lo_x)  # noqa: E731
    sy = lambda v: top + ph - ph * (v - lo_y) / (hi_y - lo_y)  # noqa: E731
    parts = []
    for t in _ticks(lo_y, hi_y):
        parts.append(
            f'<line x1="{left}" y1="{sy(t):.1f}" x2="{width - right}" y2="{sy(t):.1f}" class="grid"/>'
            + _text(left - 4, sy(t) + 4, f"{t:.3g}", "end", "tick")
        )
    for t in _ticks(lo_x, hi_x):
        parts.append(
            f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" class="grid"/>'
            + _text(sx(t), top + ph + 14, f"{t:.3g}", "middle", "tick")
        )
    if diagonal:
        parts.append(
            f'<line x1="{sx(lo_x):.1f}" y1="{sy(lo_x):.1f}" x2="{sx(hi_x):.1f}" y2="{sy(hi_x):.1f}" '
            f'stroke="{TARGET_COLOR}" stroke-dasharray="4 3"/>'
        )
    for x, y, color, tip in points:
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{color}" '
            f'fill-opacity="0.85"><title>{html.escape(tip)}</title></circle>'
        )
    parts.append(_text(left + pw / 2, height - 4, x_label, "middle", "label"))
    parts.append(
        f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" transform="rotate(-90 12 '
        f'{top + ph / 2:.1f})">{html.escape(y_label)}</text>'
    )
    return _svg(width, height, "".join(parts), f"{y_label} against {x_label}")


def _ticks(lo: float, hi: float) -> list[float]:
    step = nice_ticks(hi - lo, 4)[1]
    first = step * int(lo / step + (1 if lo > 0 else 0))
    return [first + i * step for i in range(20) if first + i * step <= hi]


def render(res: dict) -> str:
    domains, proxies, prop, rho = res["domains"], res["proxies"], res["proposal"], res["fit"]["spearman"]
    colors = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(domains)}
    gain = prop["gain"]
    cards = [
        (
            "proxies",
            str(len(proxies)),
            f"{res['proxy']['preset']}, {res['proxy']['steps']} steps, {res['proxy']['budget_tokens']:,} tokens each",
        ),
        ("domains", str(len(domains)), ", ".join(domains)),
        (
            "fit: rank correlation",
            f"{min(rho[d] for d in domains):.2f}",
            "smallest leave-one-out Spearman ρ over the domains",
        ),
        (
            "predicted gain",
            f"{gain['median']:+.4f}",
            f"{res['objective']['kind']} loss, ± {gain['spread']:.4f} (90%: {gain['interval_90'][0]:+.4f} … "
            f"{gain['interval_90'][1]:+.4f})",
        ),
    ]
    glance = (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="what">{w}</div><div class="value">{html.escape(v)}</div><div '
            f'class="sub">{html.escape(s)}</div></div>'
            for w, v, s in cards
        )
        + "</div>"
    )
    per_domain = "".join(
        figure(
            f"loss-vs-weight-{d}",
            f"{html.escape(d)}: measured validation loss of each proxy against {html.escape(d)}'s weight "
            f"(leave-one-out Spearman ρ of the law {rho[d]:.2f})",
            scatter_chart(
                [
                    (
                        x["weights"][d],
                        x["val_loss_by_domain"][d],
                        colors[d],
                        f"{x['name']}: weight {x['weights'][d]:.1%}, loss {x['val_loss_by_domain'][d]:.4f}",
                    )
                    for x in proxies
                ],
                x_label=f"weight of {d}",
                y_label=f"{d} validation loss",
            ),
        )
        for d in domains
    )
    predicted = scatter_chart(
        [
            (
                x["predicted_cv"][d],
                x["val_loss_by_domain"][d],
                colors[d],
                f"{x['name']}, {d}: predicted {x['predicted_cv'][d]:.4f}, measured {x['val_loss_by_domain'][d]:.4f}",
            )
            for x in proxies
            for d in domains
        ],
        x_label="predicted (law fitted without this proxy)",
        y_label="measured",
        diagonal=True,
        width=560,
        height=360,
    )
    legend = " · ".join(f'<span style="color:{colors[d]}">●</span> {html.escape(d)} (ρ {rho[d]:.2f})' for d in domains)
    weights = hbar_chart(
        domains,
        [
            Series("base", [prop["base_weights"][d] for d in domains], TARGET_COLOR),
            Series("proposed", [prop["weights"][d] for d in domains], PALETTE[0]),
        ],
        fmt=fmt_share,
    )
    rows = []
    for d in domains:
        change = prop["base_predicted"][d] - prop["predicted"][d]
        rows.append(
            f"<td>{html.escape(d)}</td>"
            + _num(["proposal", "base_weights", d], prop["base_weights"][d], fmt_share(prop["base_weights"][d]))
            + _num(["proposal", "weights", d], prop["weights"][d], fmt_share(prop["weights"][d]))
            + _num(["target", "caps", d], res["target"]["caps"][d], fmt_share(res["target"]["caps"][d]))
            + _num(
                ["proposal", "base_predicted", d],
                prop["base_predicted"][d],
                f"{prop['base_predicted'][d]:.4f} ± {prop['base_predicted_spread'][d]:.4f}",
            )
            + _num(
                ["proposal", "predicted", d],
                prop["predicted"][d],
                f"{prop['predicted'][d]:.4f} ± {prop['predicted_spread'][d]:.4f}",
            )
            + f'<td class="num">{change:+.4f}</td>'
        )
    rows.append(
        "<td><b>objective</b></td><td></td><td></td><td></td>"
        + _num(["proposal", "base_objective"], prop["base_objective"], f"{prop['base_objective']:.4f}")
        + _num(["proposal", "objective"], prop["objective"], f"{prop['objective']:.4f}")
        + _num(["proposal", "gain", "median"], gain["median"], f"{gain['median']:+.4f} ± {gain['spread']:.4f}")
    )
    proposal_table = table(
        "proposal",
        [
            "domain",
            "base weight",
            "proposed weight",
            "cap (epochs at target)",
            "base: predicted loss",
            "proposed: predicted loss",
            "predicted gain",
        ],
        rows,
    )
    proxy_rows = [
        f"<td>{html.escape(x['name'])}</td><td>{html.escape(x['run_id'])}</td>"
        + "".join(_num(["proxies", k, "weights", d], x["weights"][d], fmt_share(x["weights"][d])) for d in domains)
        + "".join(
            _num(
                ["proxies", k, "val_loss_by_domain", d], x["val_loss_by_domain"][d], f"{x['val_loss_by_domain'][d]:.4f}"
            )
            for d in domains
        )
        + _num(["proxies", k, "objective"], x["objective"], f"{x['objective']:.4f}")
        for k, x in enumerate(proxies)
    ]
    proxy_table = table(
        "proxies",
        [
            "proxy",
            "run id",
            *(f"weight: {html.escape(d)}" for d in domains),
            *(f"loss: {html.escape(d)}" for d in domains),
            "objective",
        ],
        proxy_rows,
    )
    sections = [
        ("glance", "At a glance", glance),
        ("loss-vs-weight", "Each domain's loss against its weight", f'<div class="multiples">{per_domain}</div>'),
        (
            "predicted",
            "Predicted against measured",
            figure(
                "predicted-vs-measured",
                f"Each proxy's validation loss per domain, predicted by the law fitted to the other "
                f"proxies ({html.escape(res['fit']['law'])}), against the measured one. {legend}",
                predicted,
            ),
        ),
        (
            "proposal",
            "The proposed mix against the base",
            figure(
                "weights",
                f"Domain weights; the proposal keeps each domain under its cap "
                f"({res['target']['max_epochs']:g} epochs at {res['target']['tokens']:,.0f} training tokens). "
                "Predicted losses ± their standard deviation over bootstrap refits of the proxies.",
                weights,
            )
            + proposal_table,
        ),
        ("proxies", "Every proxy", proxy_table),
    ]
    body = "".join(f'<section id="{i}"><h2>{t}</h2>{inner}</section>' for i, t, inner in sections)
    head = (
        f'<h1>Mixture sweep: {html.escape(res["base_recipe"])}</h1><div class="meta">work store '
        f"{html.escape(res['work'])} · "
        f"objective: {html.escape(res['objective']['kind'])} validation loss</div>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        'content="width=device-width, initial-scale=1">'
        f"<title>tokenmill sweep</title><style>{CSS}</style></head><body><main>{head}{body}</main></body></html>\n"
    )
