"""Datasets that need no network.

* ``fastnn.datasets.digits``: the UCI 8x8 handwritten digits, embedded in the
  package, always available.
* ``fastnn.datasets.mnist``: MNIST read from local IDX files (gzipped or not);
  see ``fastnn.datasets.mnist.load_data`` for where they are looked for.

Both ``load_data`` functions return ``((x_train, y_train), (x_test, y_test))``
like ``keras.datasets``. This package imports only NumPy and the standard
library, never the compiled extension.
"""
from . import digits, mnist

__all__ = ["digits", "mnist"]
