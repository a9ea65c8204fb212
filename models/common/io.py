"""Output helpers shared by every stage: atomic writes and small JSON manifests.

A stage writes into a temporary sibling path and renames it over the final one only when complete,
so a failure (bad input, Ctrl-C) never leaves a half-written output or damages the previous one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces ``final`` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """Deterministic JSON (sorted keys) written atomically."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=indent, sort_keys=True)
        fh.write("\n")


def save_npz(path: str | Path, **arrays) -> None:
    """Compressed ``.npz`` with fixed zip timestamps, so identical arrays give identical bytes
    (``np.savez_compressed`` stamps the current time into the archive). ``np.load`` reads it."""
    import io
    import zipfile

    import numpy as np

    with atomic_file(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=6)
