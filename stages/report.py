"""DVC stage ``report``: one readable report of the whole pipeline, last in the DAG.

    python -m stages.report [--params params.yaml] [--reports reports] [--out reports/report]

Reads only what the stages wrote (``reports/**/metrics.json``, ``details.json``, figures) and ``params.yaml`` (to
list the params that differ from the defaults), and writes ``<out>/report.md`` (renders on GitHub / GitLab, images
by relative path) and ``<out>/report.html`` (one self-contained page: images embedded, CSS inline). Per part of the
pipeline: what ran (data sizes, changed params), the headline table with the model beside its baselines and
ceiling, the verdicts, the key figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stages._cli import guarded, stage_parser


def main(argv: list[str] | None = None) -> int:
    from models.report.sections import ReportInputError

    return guarded(_main, argv, (ReportInputError, FileNotFoundError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--out", default="reports/report")
    args = ap.parse_args(argv)
    from models.common.params import read_params_file
    from models.report.build import write_report

    params = read_params_file(args.params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = write_report(Path(args.reports), params, out / "report.md", out / "report.html")
    print(f"report: {result['held']} of {result['verdicts']} verdicts hold -> {out / 'report.md'}, "
          f"{out / 'report.html'}")


if __name__ == "__main__":
    sys.exit(main())
