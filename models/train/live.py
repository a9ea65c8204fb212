"""DVCLive logging for the loop (rank 0 only); it never writes or edits a ``dvc.yaml``.

Files, for ``dvc metrics``/``dvc exp show`` and ``dvc plots`` (declared by the stage in our dvc.yaml):

    <live_dir>/metrics.json                   the headline only: {<live_dir name>: {"loss": .., "val_loss": ..}}
    <live_dir>/plots/metrics/train/<k>.tsv    "step<TAB>k" rows: mean of each loss component over a window
    <live_dir>/plots/metrics/lr/<group>.tsv   per-group learning rate
    <live_dir>/plots/metrics/val/<k>.tsv      validation metrics, one row per evaluated epoch

``step`` is the number of optimizer updates done. metrics.json holds the latest train and val loss under the
run's folder name (``train_planner.val_loss`` in ``dvc exp show``, unique across the pipeline's runs), not
DVCLive's latest value of everything logged: every other curve is in the TSVs. Pitfalls handled here
(design/dvc.md §3.5):
``dvcyaml=False`` (the default rewrites our dvc.yaml), ``save_dvc_exp=False`` (the default creates an
experiment ref), no timestamps in the TSVs (deterministic files); we never call ``next_step()`` (it
signals the VS Code extension and rewrites metrics.json every step).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from dvclive import Live

from models.common.io import write_json


HEADLINE = {"loss": "train/loss", "val_loss": "val/loss"}  # metrics.json key -> logged name


class _Live(Live):
    def _init_test(self) -> None:
        # Under DVCLIVE_TEST=true, dvclive 3.49.1 calls os.fspath(dvcyaml), which raises TypeError for
        # dvcyaml=False/None, and re-roots a relative dir in a throwaway temp dir. Keep what test mode
        # is for (no repo, no experiment) but write where we were asked to.
        self._save_dvc_exp = False
        self._dvc_file = "dvc.yaml"  # never written: dvcyaml=False

    def make_summary(self) -> None:
        name = Path(self.dir).name
        head = dict(self.summary.get(name) or {})  # a resumed run's headline, read back from metrics.json
        for key, logged in HEADLINE.items():
            group, leaf = logged.split("/")
            if leaf in (self.summary.get(group) or {}):
                head[key] = self.summary[group][leaf]
        write_json(self.metrics_file, {name: head})


def truncate_after(live_dir: str | Path, step: int) -> None:
    """Drop TSV rows logged after ``step`` (by a run that crashed after its last checkpoint)."""
    for tsv in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv, newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        i = rows[0].index("step")
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[i]) <= step]
        if len(keep) != len(rows):
            tmp = tsv.with_name(f".{tsv.name}.tmp-{os.getpid()}")
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(keep)
            os.replace(tmp, tsv)


class LiveLog:
    """Thin wrapper: ``log({"train/loss": 0.3, "lr/q": 1e-4}, step)``, ``flush``, ``close``."""

    def __init__(self, live_dir: str | Path, resume_step: int | None = None):
        if resume_step is not None:
            truncate_after(live_dir, resume_step)
        self.live = _Live(str(live_dir), resume=resume_step is not None, report=None,
                          save_dvc_exp=False, dvcyaml=False)

    def log(self, values: dict[str, float], step: int) -> None:
        self.live.step = step
        for name in sorted(values):
            value = values[name]
            self.live.log_metric(name, value if isinstance(value, int) else float(value))

    def flush(self) -> None:
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()
