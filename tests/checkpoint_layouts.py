"""Where the real checkpoints' layout dumps are: ``shared/checkpoint_layouts`` beside or inside the checkout, or
the team's ``/work/shared``. Tests that need them skip when none is found (a checkout elsewhere)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (REPO / "shared" / "checkpoint_layouts", REPO.parent / "shared" / "checkpoint_layouts",
              Path("/work/shared/checkpoint_layouts"))


def layout_dir() -> Path | None:
    return next((d for d in CANDIDATES if d.is_dir()), None)
