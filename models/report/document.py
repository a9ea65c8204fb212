"""A small document model rendered twice: Markdown that GitHub / GitLab render, and one self-contained HTML page.

Blocks: ``Heading``, ``Paragraph`` (inline ``code`` in backticks kept), ``Table``, ``Figures`` and ``Verdicts``. The
HTML embeds every image as a base64 data URI and its CSS inline, so the page works alone (sent by mail, opened from
disk); the Markdown links the images by path relative to the Markdown file. Written here rather than with a Markdown
library because the two renderings must carry the same content from one structure, and the HTML must hold its
images (a Markdown-to-HTML converter would leave them as links).
"""
from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figures:
    paths: list[Path]                   # PNG files (absolute or relative to the working directory)
    caption: str = ""
    width_percent: int = 48


@dataclass
class Verdicts:
    items: list[tuple[bool, str]] = field(default_factory=list)   # (holds, sentence)


def fmt(value, digits: int = 4) -> str:
    """Numbers for tables: fixed significant digits, integers as they are."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


# -- Markdown ---------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list, md_path: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Paragraph):
            out.append(b.text + "\n")
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(b.header))) + " |")
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
            out.append(f"\n*{b.caption}*\n" if b.caption else "")
        elif isinstance(b, Figures):
            rel = [os.path.relpath(p, md_path.parent).replace(os.sep, "/") for p in b.paths]
            out.append(" ".join(f'<img src="{r}" width="{b.width_percent}%" alt="{Path(r).name}">' for r in rel)
                       + "\n")
            if b.caption:
                out.append(f"*{b.caption}*\n")
        elif isinstance(b, Verdicts):
            out.extend(f"- {'✅' if ok else '❌'} {text}" for ok, text in b.items)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


# -- HTML -------------------------------------------------------------------------------------------------------

CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1,h2,h3{border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}code{background:#f3f3f3;
padding:0 .2em;border-radius:3px}figure{display:inline-block;margin:.4em;vertical-align:top}figure img{max-width:100%}
.cap{color:#555;font-style:italic}.ok{color:#1a7f37}.bad{color:#cf222e}ul.verdicts{list-style:none;padding-left:0}"""


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** as in the Markdown."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?\s*%?", cell.strip()))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(blocks: list, title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>")
            for row in b.rows:
                out.append("<tr>" + "".join(f'<td class="n">{_inline(c)}</td>' if i and _numeric(c)
                                            else f"<td>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>")
            out.append("</tbody></table>")
            if b.caption:
                out.append(f'<p class="cap">{_inline(b.caption)}</p>')
        elif isinstance(b, Figures):
            out.append("<div>" + "".join(
                f'<figure style="width:{b.width_percent}%"><img src="{_data_uri(p)}" alt="{html.escape(Path(p).name)}">'
                f"</figure>" for p in b.paths) + "</div>")
            if b.caption:
                out.append(f'<p class="cap">{_inline(b.caption)}</p>')
        elif isinstance(b, Verdicts):
            out.append('<ul class="verdicts">' + "".join(
                f'<li class="{"ok" if ok else "bad"}">{"✔" if ok else "✘"} {_inline(t)}</li>' for ok, t in b.items)
                + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
