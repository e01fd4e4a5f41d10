"""Training: the loop, schedule, checkpoints/resume, progress."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .trainer import TrainConfig, Trainer, train_encoder

__all__ = ["TrainConfig", "Trainer", "train_encoder", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint"]
