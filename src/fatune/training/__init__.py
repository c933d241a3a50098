"""Training: ``train(config)`` runs one method on one model into a run directory."""

from fatune.training.run import train

__all__ = ["train"]
