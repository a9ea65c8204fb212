"""A user's own recordings: multi-view sequence folders (images, depth, intrinsics, world-to-camera extrinsics,
dynamic masks), read the same way by the tracking and geometry stages."""
from models.sequences.layout import SequenceLayoutError, ViewTimeGrid, find_grid
from models.sequences.reader import MultiViewSequence

__all__ = ["MultiViewSequence", "SequenceLayoutError", "ViewTimeGrid", "find_grid"]
