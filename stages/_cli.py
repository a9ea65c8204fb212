"""What every stage entry point shares: the command line and one clear line for bad params or bad input.

    python -m stages.<name> [--params params.yaml] [-S section.key=value ...] [--no-progress] [stage options]

``-S`` overrides one param for this run, with the syntax of ``dvc exp run -S`` (the value is YAML, so
``-S planner.use_rope=false`` is a boolean and ``-S cache.patch_size=[60.0, 30.0]`` a list) and the same
validation as the file. An override of a section the stage does not read, or of an unknown key, is refused.
Progress bars show only when stderr is a terminal, and never with ``--no-progress``.

A failing stage prints one line, ``error: <message>`` naming the file, record or key: exit 2 for bad params, 1 for
bad input (every stage catches the shared input errors of :func:`base_input_errors`); other exceptions are bugs
and keep their traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from models.common.params import ParamsError, load_section


# Input errors every stage turns into one line (exit 1), by module and class name: a class counts only once its
# module is imported (only then can it have been raised), so no stage imports a model package just to catch it.
BASE_INPUT_ERRORS = (
    ("models.train.checkpoint", "CheckpointError"),
    ("models.nuscenes.validate", "NuScenesInputError"),
    ("models.nuscenes.dataset", "CacheMismatchError"),
    ("models.planner.data", "ImageDecodeError"),
    ("models.geometry.data", "WindowInputError"),
    ("models.geometry.convert", "ConversionError"),
    ("models.mapdet.data", "MapInputError"),
    ("models.mapdet.checkpoints", "CheckpointFolderError"),
    ("models.tracking.sources", "TrackingInputError"),
    ("models.sequences.layout", "SequenceLayoutError"),
)


def base_input_errors() -> tuple[type[BaseException], ...]:
    """``FileNotFoundError`` and the ``BASE_INPUT_ERRORS`` classes whose modules are loaded."""
    found = [getattr(sys.modules[mod], name) for mod, name in BASE_INPUT_ERRORS if mod in sys.modules]
    return (FileNotFoundError, *found)


def _report(exc: BaseException) -> None:
    """``error: <message>`` on its own line of stderr: on a terminal, live progress bars are closed first and the
    cursor returns to the start of a cleared line, so the message never continues a bar's line."""
    if sys.stderr.isatty():
        tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
        for bar in list(getattr(tqdm, "_instances", None) or ()):
            try:
                bar.close()
            except Exception:  # a bar whose stream is gone: nothing left to tidy
                pass
        sys.stderr.write("\r\x1b[K")
    message = " ".join(str(exc).splitlines()) or type(exc).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)


def guarded(body: Callable[[list[str] | None], None], argv: list[str] | None, input_errors: tuple = ()) -> int:
    """Run a stage body; return 0, or print ``error: <message>`` on one line (the message names the file, the
    record or key, and what is wrong) and return 2 for bad params, 1 for bad input: the stage's ``input_errors``
    and :func:`base_input_errors` (checkpoints, nuScenes and cache inputs, images, windows, source checkpoints,
    map GT, tracking and sequence inputs, missing files), so no stage has to list them."""
    try:
        body(argv)
    except ParamsError as exc:
        _report(exc)
        return 2
    except Exception as exc:
        if not isinstance(exc, tuple(input_errors) + base_input_errors()):
            raise
        _report(exc)
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
