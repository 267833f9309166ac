"""Lightning modules for training evaluation networks."""
from relnas.models.classifier import ARCHITECTURE_KEYS, ClassifierModule, architecture_mismatch

__all__ = ["ClassifierModule", "architecture_mismatch", "ARCHITECTURE_KEYS"]
