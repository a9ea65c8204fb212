"""Where the files of a multi-view sequence are: one (time, view) grid of paths per folder.

Two layouts, told apart by the folder names directly under the folder:

    time-major                     view-major
    images/time_0/view0.png        images/view0/0.png
    images/time_0/view1.png        images/view0/1.png
    images/time_1/view0.png        images/view1/0.png
    ...                            ...

Indices sort numerically (``time_2`` before ``time_10``; ``2.png`` before ``10.png``), and may have leading zeros.
The same layouts hold for ``depths/`` (``.npy``), ``intrs/`` and ``extrs/`` (``.npy`` or ``.txt``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TIME_DIR = re.compile(r"^time_(\d+)$")
VIEW_DIR = re.compile(r"^view_?(\d+)$")
VIEW_FILE = re.compile(r"^view_?(\d+)$")   # file stem inside a time folder
TIME_FILE = re.compile(r"^(\d+)$")         # file stem inside a view folder


class SequenceLayoutError(ValueError):
    """A sequence folder whose files do not form one complete (time, view) grid; the message names the file."""


@dataclass(frozen=True)
class ViewTimeGrid:
    """``paths[t][v]`` for the sorted time indices ``times`` and view indices ``views``."""

    folder: Path
    layout: str                  # "time-major" or "view-major"
    times: tuple[int, ...]
    views: tuple[int, ...]
    paths: tuple[tuple[Path, ...], ...]

    @property
    def num_times(self) -> int:
        return len(self.times)

    @property
    def num_views(self) -> int:
        return len(self.views)


def _indexed(entries, pattern: re.Pattern, extensions: tuple[str, ...] | None) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in entries:
        if extensions is not None and (not p.is_file() or p.suffix.lower() not in extensions):
            continue
        name = p.stem if extensions is not None else p.name
        m = pattern.match(name)
        if m is None:
            continue
        k = int(m.group(1))
        if k in out:
            raise SequenceLayoutError(f"{p}: index {k} appears twice ({out[k].name} and {p.name})")
        out[k] = p
    return out


def find_grid(folder: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> ViewTimeGrid:
    """The (time, view) grid of files with ``extensions`` under ``folder``, in either layout.

    Refused, naming the file or folder: no recognised layout, both layouts at once (the message gives both
    readings), a time without one of the views, or views with different frame counts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SequenceLayoutError(f"{folder}: not a folder")
    dirs = [p for p in folder.iterdir() if p.is_dir()]
    time_dirs = _indexed(dirs, TIME_DIR, None)
    view_dirs = _indexed(dirs, VIEW_DIR, None)
    if time_dirs and view_dirs:
        raise SequenceLayoutError(
            f"{folder}: ambiguous layout: {len(time_dirs)} folder(s) time_<t>/ (time-major: time_<t>/view<k>.<ext>) "
            f"and {len(view_dirs)} folder(s) view<k>/ (view-major: view<k>/<t>.<ext>); keep one of the two")
    if time_dirs:
        return _time_major(folder, time_dirs, extensions)
    if view_dirs:
        return _view_major(folder, view_dirs, extensions)
    raise SequenceLayoutError(
        f"{folder}: no sequence layout found: expected folders time_<t>/ holding view<k>{extensions[0]} "
        f"(time-major) or folders view<k>/ holding <t>{extensions[0]} (view-major); found "
        f"{sorted(p.name for p in folder.iterdir())[:8]}")


def _time_major(folder: Path, time_dirs: dict[int, Path], extensions) -> ViewTimeGrid:
    times = sorted(time_dirs)
    per_time = {t: _indexed(time_dirs[t].iterdir(), VIEW_FILE, extensions) for t in times}
    views = sorted(set().union(*per_time.values()))
    if not views:
        raise SequenceLayoutError(f"{folder}: time-major layout, but no view<k>{{{','.join(extensions)}}} file "
                                  f"in any time_<t>/ folder")
    for t in times:
        missing = [v for v in views if v not in per_time[t]]
        if missing:
            raise SequenceLayoutError(f"{time_dirs[t]}: view(s) {missing} missing (other times have views "
                                      f"{views}); every time needs every view")
    return ViewTimeGrid(folder, "time-major", tuple(times), tuple(views),
                        tuple(tuple(per_time[t][v] for v in views) for t in times))


def _view_major(folder: Path, view_dirs: dict[int, Path], extensions) -> ViewTimeGrid:
    views = sorted(view_dirs)
    per_view = {v: _indexed(view_dirs[v].iterdir(), TIME_FILE, extensions) for v in views}
    counts = {v: len(per_view[v]) for v in views}
    if len(set(counts.values())) > 1:
        raise SequenceLayoutError(f"{folder}: views have different frame counts: "
                                  + ", ".join(f"{view_dirs[v].name} {n}" for v, n in counts.items()))
    times = sorted(per_view[views[0]])
    if not times:
        raise SequenceLayoutError(f"{folder}: view-major layout, but no <t>{{{','.join(extensions)}}} file in "
                                  f"{view_dirs[views[0]]}")
    for v in views:
        if sorted(per_view[v]) != times:
            other = sorted(set(per_view[v]) ^ set(times))
            raise SequenceLayoutError(f"{view_dirs[v]}: time indices differ from {view_dirs[views[0]].name}'s "
                                      f"(e.g. {other[:5]})")
    return ViewTimeGrid(folder, "view-major", tuple(times), tuple(views),
                        tuple(tuple(per_view[v][t] for v in views) for t in times))
