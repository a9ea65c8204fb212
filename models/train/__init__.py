"""The shared training loop of every model (tokenizer, geometry, map detector, planner).

A model subclasses :class:`TrainTask` (model, loss, param groups, metrics); :func:`train` brings the
rest: seeding, AdamW + warmup/cosine, clipping, AMP, DDP, validation, DVCLive logging and
safetensors checkpoints with exact resume.
"""
from models.train.checkpoint import CheckpointError, load_weights, read_state, save_checkpoint
from models.train.config import TrainConfig
from models.train.loop import TrainingDiverged, train
from models.train.optim import WarmupCosine, build_optimizer, clip_gradients, default_param_groups
from models.train.task import TrainTask

__all__ = ["CheckpointError", "TrainConfig", "TrainTask", "TrainingDiverged", "WarmupCosine", "build_optimizer",
           "clip_gradients", "default_param_groups", "load_weights", "read_state", "save_checkpoint", "train"]
