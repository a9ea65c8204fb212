"""Which scenes form each cached split.

* ``v1.0-trainval``: the official ``train`` / ``val`` lists of ``nuscenes.utils.splits``.
* ``v1.0-mini``: the official ``mini_train`` / ``mini_val``, cached as ``train`` / ``val``.
* any other version (the synthetic ``v1.0-synth``): ``<dataroot>/<version>/splits.json`` =
  ``{"<name>_train": [scene names], "<name>_val": [scene names]}``.
"""
from __future__ import annotations

from pathlib import Path

from .validate import NuScenesInputError, read_json

REAL_SPLITS = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
}


def resolve_splits(dataroot: str | Path, version: str, scene_names: list[str],
                   wanted: list[str]) -> tuple[dict[str, list[str]], str]:
    """Return ({split: sorted scene names}, source description) for the ``wanted`` splits.

    ``scene_names`` are the names present in scene.json; a split naming an absent scene is an error.
    """
    table_root = Path(dataroot) / version
    present = set(scene_names)
    if version in REAL_SPLITS:
        from nuscenes.utils.splits import create_splits_scenes

        official = create_splits_scenes()
        lists = {split: official[REAL_SPLITS[version][split]] for split in wanted}
        source = "nuscenes.utils.splits.create_splits_scenes(): " + ", ".join(
            f"{s} = {REAL_SPLITS[version][s]}" for s in wanted)
        where = table_root / "scene.json"
    else:
        path = table_root / "splits.json"
        obj = read_json(path, f"custom splits for version '{version}' (real versions: {sorted(REAL_SPLITS)})")
        if not isinstance(obj, dict):
            raise NuScenesInputError(path, "splits.json must be an object {\"<name>_train\": [...], ...}")
        lists, keys = {}, {}
        for split in wanted:
            matches = sorted(k for k in obj if k.endswith(f"_{split}"))
            if len(matches) != 1:
                raise NuScenesInputError(path, f"need exactly one key ending in '_{split}', found {matches}")
            names = obj[matches[0]]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise NuScenesInputError(path, f"'{matches[0]}' must be a list of scene names")
            lists[split], keys[split] = names, matches[0]
        source = f"{version}/splits.json: " + ", ".join(f"{s} = {keys[s]}" for s in wanted)
        where = path
    out = {}
    for split, names in lists.items():
        missing = [n for n in names if n not in present]
        if missing:
            raise NuScenesInputError(where, f"split '{split}' lists scene {missing[0]!r} "
                                            f"({len(missing)} missing in all) which is not in scene.json")
        if not names:
            raise NuScenesInputError(where, f"split '{split}' has no scenes")
        out[split] = sorted(names)
    seen: dict[str, str] = {}
    for split, names in out.items():
        for n in names:
            if n in seen:
                raise NuScenesInputError(where, f"scene {n!r} is in both '{seen[n]}' and '{split}'")
            seen[n] = split
    return out, source
