"""The transparency report as one self-contained HTML page: figures and bar charts (inline SVG, no
scripts, no external files), for a data-protection officer to read or print."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from gateway.audit.log import TransparencyReport, report_document

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 58rem; color: #1d232a;
       padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.period { color: #57606a; margin-top: 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(10rem, 1fr)); gap: .8rem; }
.tile { border: 1px solid #d0d7de; border-radius: .5rem; padding: .7rem .9rem; }
.tile b { display: block; font-size: 1.6rem; } .tile span { color: #57606a; }
.chart text { font-size: 13px; fill: #1d232a; } .empty { color: #57606a; font-style: italic; }
@media print { body { margin: 0; } }
"""
_COLOURS = {
    "RELEASED": "#2da44e",
    "PARTIAL": "#bf8700",
    "DENIED": "#cf222e",
    "NOT_FOUND": "#8c959f",
    "WRITTEN": "#0969da",
    "UNCHANGED": "#8c959f",
}


def _bars(title: str, counts: dict[str, int], *, note: str = "") -> str:
    if not counts:
        return f"<h2>{escape(title)}</h2><p class='empty'>Nothing in this period.</p>"
    rows = list(counts.items())
    widest = max(counts.values())
    label_width, bar_width, row_height = 230, 420, 26
    height = row_height * len(rows) + 6
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="100%" '
        f'viewBox="0 0 {label_width + bar_width + 80} {height}">'
    ]
    for index, (label, count) in enumerate(rows):
        y = index * row_height + 3
        width = max(2, round(bar_width * count / widest))
        colour = _COLOURS.get(label, "#0969da")
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{width}" height="{row_height - 8}" '
            f'rx="3" fill="{colour}"><title>{escape(label)}: {count}</title></rect>'
            f'<text x="{label_width + width + 6}" y="{y + 17}">{count}</text>'
        )
    parts.append("</svg>")
    caption = f"<p>{escape(note)}</p>" if note else ""
    return f"<h2>{escape(title)}</h2>{caption}{''.join(parts)}"


def _tile(value: Any, label: str) -> str:
    return f'<div class="tile"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def render(report: TransparencyReport, *, controller: str) -> str:
    data = report_document(report)
    granted, withdrawn = data["consents_granted"], data["consents_withdrawn"]
    consent_changes = {
        **{f"{k}: granted": v for k, v in granted.items()},
        **{f"{k}: withdrawn": v for k, v in withdrawn.items()},
        **{f"{k}: expired": v for k, v in data["consents_expired"].items()},
    }
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>Transparency report · {escape(controller)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>Transparency report · {escape(controller)}</h1>",
            f"<p class='period'>{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} "
            f"(UTC) · generated {generated} by Tillit</p>",
            "<div class='tiles'>",
            _tile(data["accesses"], "accesses to member data"),
            _tile(sum(granted.values()), "consents granted"),
            _tile(sum(withdrawn.values()), "consents withdrawn"),
            _tile(data["enrichment_records"], "enriched values stored"),
            _tile(data["cleansing_records"], "cleansing corrections"),
            _tile(data["objections"], "objections"),
            _tile(data["notices_overdue"], "notices overdue"),
            "</div>",
            _bars("Accesses by outcome", data["by_outcome"]),
            _bars("Accesses by purpose", data["by_purpose"]),
            _bars("Accesses by client", data["by_client"]),
            _bars(
                "Why fields were withheld",
                data["withheld_reasons"],
                note="One count per withheld field.",
            ),
            _bars("Consent changes by purpose", consent_changes),
            "</body></html>",
        ]
    )
