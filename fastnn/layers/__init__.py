"""Layers with Keras's names, arguments and weight layouts."""
from .activation import Activation, ReLU, Softmax
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .input_layer import Input, InputLayer
from .merge import Add, Concatenate, Multiply
from .normalization import BatchNormalization
from .padding import ZeroPadding2D
from .pooling import (AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                      MaxPooling2D)
from .reshaping import Flatten, Reshape

__all__ = ["Activation", "Add", "AveragePooling2D", "BatchNormalization", "Concatenate",
           "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAveragePooling2D",
           "GlobalMaxPooling2D", "Input", "InputLayer", "Layer", "MaxPooling2D", "Multiply",
           "ReLU", "Reshape", "Softmax", "ZeroPadding2D"]
