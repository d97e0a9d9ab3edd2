"""Model construction and loading, as keras.models."""
from .model import Model, Sequential
from .saving import load_model, model_from_config

__all__ = ["Model", "Sequential", "load_model", "model_from_config"]
