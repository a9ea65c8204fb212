"""What every stage entry point shares: the command line and one clear line for bad params or bad input.

    python -m stages.<name> [--params params.yaml] [-S section.key=value ...] [--no-progress] [stage options]

``-S`` overrides one param for this run, with the syntax of ``dvc exp run -S`` (the value is YAML, so
``-S planner.use_rope=false`` is a boolean and ``-S cache.patch_size=[60.0, 30.0]`` a list) and the same
validation as the file. An override of a section the stage does not read, or of an unknown key, is refused.
Progress bars show only when stderr is a terminal, and never with ``--no-progress``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from models.common.params import ParamsError, load_section


def guarded(body: Callable[[list[str] | None], None], argv: list[str] | None, input_errors: tuple = ()) -> int:
    """Run a stage body; return 0, or print ``error: <message>`` (the message names the file, the record or
    key, and what is wrong) and return 2 for bad params, 1 for bad input."""
    try:
        body(argv)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except input_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has: ``--params``, ``-S``, ``--no-progress``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                    metavar="SECTION.KEY=VALUE", help="override one param for this run, as dvc exp run -S "
                    "(the value is YAML); repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    return ap


def load_params(args: argparse.Namespace, *sections: str) -> list:
    """The validated ``sections`` of ``args.params`` with ``args.overrides`` (``-S``) applied, in order."""
    overrides = parse_overrides(args.overrides, sections)
    return [load_section(name, args.params, overrides.get(name)) for name in sections]


def parse_overrides(items: list[str], sections: tuple[str, ...]) -> dict[str, dict]:
    """``["planner.epochs=2", ...]`` -> ``{"planner": {"epochs": 2}}``; values parsed as YAML 1.2 (as DVC)."""
    from ruamel.yaml import YAML

    out: dict[str, dict] = {}
    for item in items:
        key, eq, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name or "." in name:
            raise ParamsError(f"-S {item!r}: expected section.key=value, e.g. -S planner.epochs=2")
        if section not in sections:
            raise ParamsError(f"-S {item!r}: '{section}' is not a section this stage reads "
                              f"({', '.join(sections)})")
        try:
            value = YAML(typ="safe", pure=True).load(text)
        except Exception as exc:  # ruamel raises several parser error types
            raise ParamsError(f"-S {item!r}: the value is not valid YAML: {exc}") from exc
        out.setdefault(section, {})[name] = value
    return out


def write_reports(metrics: str, headline: dict, details: dict) -> None:
    """``metrics``: the headline numbers (``dvc exp show``); ``<stem>_details.json`` beside it: everything else.
    ``metrics=''`` writes neither."""
    from models.common.io import write_json

    if metrics:
        write_json(Path(metrics).with_name(f"{Path(metrics).stem}_details.json"), details)
        write_json(metrics, headline)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and never with ``--no-progress``."""
    return not args.no_progress and sys.stderr.isatty()
