"""Layers with Keras's names, arguments and weight layouts."""
from .activation import Activation, ReLU, Softmax
from .base import Layer
from .dense import Dense
from .dropout import Dropout
from .input_layer import Input, InputLayer
from .reshaping import Flatten, Reshape

__all__ = ["Activation", "Dense", "Dropout", "Flatten", "Input", "InputLayer", "Layer",
           "ReLU", "Reshape", "Softmax"]
