"""Assemble the report from the stages' outputs and write ``report.md`` + ``report.html`` (see ``sections``)."""
from __future__ import annotations

from pathlib import Path

from .document import Heading, Paragraph, Verdicts, to_html, to_markdown
from .sections import SECTIONS, changed_params, wall_times

TITLE = "Driving and robot-learning pipeline: results"


def build(reports: Path, params: dict) -> list:
    changed = changed_params(params)
    times = wall_times(reports)
    blocks: list = [Heading(TITLE, 1),
                    Paragraph("Every number below is read from the stages' `metrics` and `details` files and every "
                              "picture is one of their figures; nothing is recomputed. Regenerate with `dvc repro "
                              "report`; compare experiments with `dvc exp show`.")]
    body = [b for section in SECTIONS for b in section(reports, changed, times)]
    verdicts = [v for b in body if isinstance(b, Verdicts) for v in b.items]
    held = sum(ok for ok, _ in verdicts)
    blocks.append(Paragraph(f"**{held} of {len(verdicts)} verdicts hold.**"))
    return blocks + body


def write_report(reports: Path, params: dict, md_path: Path, html_path: Path) -> dict:
    """Both renderings, written atomically; returns ``{"verdicts": n, "held": k}``."""
    from models.common.io import atomic_file

    blocks = build(reports, params)
    with atomic_file(md_path) as fh:
        fh.write(to_markdown(blocks, md_path))
    with atomic_file(html_path) as fh:
        fh.write(to_html(blocks, TITLE))
    verdicts = [v for b in blocks if isinstance(b, Verdicts) for v in b.items]
    return {"verdicts": len(verdicts), "held": sum(ok for ok, _ in verdicts)}
