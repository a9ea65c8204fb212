"""Which windows a geometry stage reads: ``open_windows(params.train_geometry, split, cfg, cache_dir)``.

* ``source: nuscenes``: the GT cache's key frames (the synthetic world by default, a real nuScenes dataroot
  unchanged): windows of ``frames`` consecutive key frames x ``cameras`` resized to ``image_size``
  (:class:`models.geometry.data.NuScenesWindows`).
* ``source: sequences``: every multi-view sequence folder inside ``input`` (:class:`SequenceWindows`, all views
  of each; every folder must have the same number of views so that windows batch). ``val_sequences`` names the
  validation folders, by default the last folder in sorted order; the others train. A folder with fewer times
  than ``frames`` is an error naming it (a user's sequence is not skipped silently).
"""
from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import ConcatDataset

from .config import GeometryConfig
from .data import NuScenesWindows, SequenceWindows, WindowCache, collate_windows

__all__ = ["check_input", "collate_windows", "open_windows", "sequence_split"]


def check_input(p, cache_dir: str) -> None:
    """``train_geometry.input`` is the stage's data dependency in dvc.yaml (DVC cannot choose one by ``source``):
    for the nuscenes source it must name the table folder of the dataroot the GT cache was built from
    (``<data.dataroot>/<data.version>``, from the cache's manifest), so that DVC and the stage read the same."""
    import json

    from models.common.params import ParamsError

    if p.source != "nuscenes":
        return
    manifest = Path(cache_dir) / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no GT cache manifest (run the gt_cache stage first)")
    man = json.loads(manifest.read_text())
    tables = os.path.join(str(man["dataroot"]), str(man["version"]))
    if os.path.normpath(p.input) != os.path.normpath(tables):
        raise ParamsError(f"params: train_geometry.input = {p.input!r}: with train_geometry.source = nuscenes it must "
                          f"be <data.dataroot>/<data.version> of the GT cache ({manifest}: {tables!r}), the folder "
                          f"DVC watches for this stage (-S train_geometry.input={tables})")


def sequence_split(p) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...]}`` sequence folders of ``p.input`` (sub-folders holding ``images/``)."""
    root = Path(p.input)
    if not root.is_dir():
        raise FileNotFoundError(f"train_geometry.input = {p.input!r}: no such folder of multi-view sequences")
    folders = sorted(d for d in root.iterdir() if (d / "images").is_dir())
    if (root / "images").is_dir():
        raise ValueError(f"{root}: is one sequence folder; train_geometry.input must be a folder of sequence "
                         "folders (at least one for training and one for validation)")
    if len(folders) < 2:
        raise ValueError(f"{root}: {len(folders)} sequence folder(s) (sub-folders with images/); training needs at "
                         "least two: one to train on and one to validate")
    names = [d.name for d in folders]
    val_names = list(p.val_sequences) if p.val_sequences is not None else [names[-1]]
    missing = [n for n in val_names if n not in names]
    if missing:
        raise ValueError(f"params: train_geometry.val_sequences names {missing}, not sequence folders of {root} "
                         f"(found {names})")
    split = {"train": [d for d in folders if d.name not in val_names],
             "val": [d for d in folders if d.name in val_names]}
    if not split["train"]:
        raise ValueError(f"params: train_geometry.val_sequences = {val_names} leaves no sequence of {root} to train on")
    return split


def open_windows(p, split: str, cfg: GeometryConfig, cache_dir: str, cache_mb: int = 0):
    """The split's windows; ``cache_mb > 0`` keeps read windows in memory (:class:`WindowCache`), for a reader that
    comes back to them (training: every epoch and every validation)."""
    windows = _open(p, split, cfg, cache_dir)
    return WindowCache(windows, cache_mb) if cache_mb else windows


def _open(p, split: str, cfg: GeometryConfig, cache_dir: str):
    H, W = p.image_size
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ValueError(f"params: train_geometry.image_size = {list(p.image_size)}: both sides must be multiples of "
                         f"geometry.patch_size = {cfg.patch_size}")
    stride = p.window_stride if split == "train" else p.frames
    if p.source == "nuscenes":
        return NuScenesWindows(cache_dir, split, frames=p.frames, cameras=list(p.cameras), image_hw=(H, W),
                               stride=stride)
    parts = [SequenceWindows(d, frames=p.frames, image_hw=(H, W), depth_unit=p.depth_unit, stride=stride,
                             masks=p.masks) for d in sequence_split(p)[split]]
    for w in parts:
        lacking = [name for name, have in (("depths/", w.seq.depths), ("intrs/", w.seq.intrs), ("extrs/", w.seq.extrs))
                   if have is None]
        if lacking:
            raise ValueError(f"{w.root}: training and scoring the geometry model need depth and calibration; this "
                             f"sequence folder has no {', '.join(lacking)} (inference alone: stages.geometry_infer)")
    views = {w.root.name: w.seq.num_views for w in parts}
    first = parts[0].seq.num_views
    if any(v != first for v in views.values()):
        raise ValueError(f"{p.input}: the sequence folders have different numbers of views {views}; windows of "
                         "one training run must have the same views")
    if p.external_mask:
        lacking = [w.root.name for w in parts if w.seq.masks is None]
        if lacking:
            raise ValueError(f"params: train_geometry.external_mask is true but sequence folder(s) {lacking} of "
                             f"{p.input} have no '{p.masks}/' masks to feed as M_ext")
    data = ConcatDataset(parts)
    data.sequences = [w.root.name for w in parts]
    return data
