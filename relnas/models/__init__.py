"""Lightning modules for training evaluation networks."""
from relnas.models.classifier import ClassifierModule

__all__ = ["ClassifierModule"]
