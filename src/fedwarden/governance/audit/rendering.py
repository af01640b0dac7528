"""An audit report rendered as JSON, one self-contained HTML page, or PDF (with weasyprint)."""

from __future__ import annotations

import html
import importlib
import json
from collections.abc import Mapping
from typing import Any

from fedwarden.governance.audit.events import AuditError


def render_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON with sorted keys."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.4em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
.ok { color: #176317; font-weight: bold; }
.bad { color: #a31515; font-weight: bold; }
"""

_SECTIONS = (
    ("lineage", "Lineage"),
    ("privacy", "Privacy guarantees"),
    ("participant_integrity", "Participant integrity"),
    ("retention_deletions", "Retention deletions"),
    ("signers", "Signers (root key, delegated keys and their revocations)"),
    ("unknown_event_kinds", "Event kinds this version does not know"),
)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (no external assets; every value escaped)."""
    verification = report["verification"]
    if verification["ok"]:
        status = (
            f'<p class="ok">Audit log verified: {verification["entries"]} entries, '
            f"last hash {html.escape(str(verification['last_hash']))}.</p>"
        )
    else:
        status = (
            f'<p class="bad">Audit log FAILED verification at entry '
            f"{html.escape(str(verification['first_bad']))}: "
            f"{html.escape(str(verification['problem']))}</p>"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>fedwarden audit report</title>",
        f"<style>{_HTML_STYLE}</style></head><body>",
        "<h1>fedwarden audit report</h1>",
        f"<p>Generated {html.escape(str(report['generated_at']))}; client ids: "
        f"{html.escape(str(report['client_ids']))}.</p>",
        "<h2>Verification</h2>",
        status,
    ]
    for key, title in _SECTIONS:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_html_value(report[key]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_value(value: Any) -> str:
    """A JSON value as HTML: objects as two-column tables, lists of objects as tables."""
    if isinstance(value, Mapping):
        if not value:
            return "<p>none</p>"
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{_html_value(item)}</td></tr>"
            for key, item in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<p>none</p>"
        if all(isinstance(item, Mapping) for item in value):
            columns = list(dict.fromkeys(key for item in value for key in item))
            header = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
            body = "".join(
                "<tr>"
                + "".join(f"<td>{_html_value(item.get(column))}</td>" for column in columns)
                + "</tr>"
                for item in value
            )
            return f"<table><tr>{header}</tr>{body}</table>"
        return html.escape(", ".join(str(item) for item in value))
    if value is None:
        return "&mdash;"
    return html.escape(str(value))


def render_pdf(report: Mapping[str, Any]) -> bytes:
    """The HTML report printed to PDF with weasyprint, if that library is installed.

    The pages are A4 landscape and long values (hashes, timestamps, cohorts) wrap inside their
    cells, so that every column of the report stays on the page.
    """
    try:
        weasyprint = importlib.import_module("weasyprint")
    except ImportError:
        raise AuditError(
            "PDF reports need the weasyprint library, which is not installed; write the "
            "report with --format html (and print it to PDF from a browser), or install "
            "it with `pip install 'fedwarden[report]'`"
        ) from None
    page_style = weasyprint.CSS(
        string="@page { size: A4 landscape; margin: 1cm; } "
        "body { margin: 0 !important; font-size: 6.5pt; } "
        "th, td { overflow-wrap: anywhere; padding: 0.15em 0.3em !important; }"
    )
    pdf: bytes = weasyprint.HTML(string=render_html(report)).write_pdf(stylesheets=[page_style])
    return pdf
