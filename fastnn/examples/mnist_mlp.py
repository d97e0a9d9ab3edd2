"""Train the classic Keras MNIST MLP with fastnn.

    python -m fastnn.examples.mnist_mlp [--epochs N] [--batch-size 128]
        [--data DIR] [--device cpu|cuda] [--seed S] [--save PATH]

The model is the one from the Keras getting-started guide:

    Flatten(input_shape=(28, 28)) -> Dense(128, relu) -> Dense(10, softmax)
    compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

It trains on MNIST when the four IDX files are found (in ``--data DIR``, else
``$FASTNN_DATA/mnist``, else ``~/.fastnn/datasets/mnist``). Without them it
trains on the small 8x8 digits embedded in fastnn, so the example always runs;
nothing is ever downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fastnn.datasets import digits, mnist

MNIST_EPOCHS = 10
# The embedded digits set has ~1400 training images, 40x fewer than MNIST, so
# each epoch is a handful of steps: it needs more epochs to converge.
DIGITS_EPOCHS = 30
NUM_CLASSES = 10

Arrays = Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastnn.examples.mnist_mlp",
        description="Train a 2-layer MLP on MNIST (or, without the MNIST files, "
                    "on fastnn's embedded 8x8 digits).",
    )
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default {MNIST_EPOCHS} on MNIST, "
                             f"{DIGITS_EPOCHS} on the embedded digits)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="directory holding the MNIST IDX files (plain or .gz); "
                             "default: $FASTNN_DATA/mnist, then ~/.fastnn/datasets/mnist")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to train (default: $FASTNN_DEVICE, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--save", metavar="PATH", default=None,
                        help="save the trained model here (not saved by default)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="fit() verbosity as in Keras: 0 silent, 1 progress bar, "
                             "2 one line per epoch (default 2)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive integer, got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    return args


def load_dataset(data: Optional[str]) -> Tuple[str, str, Arrays]:
    """Picks MNIST when its files are found, else the embedded digits.

    Args:
        data: the ``--data`` directory, or None to search the default places.

    Returns:
        ``(kind, description, ((x_train, y_train), (x_test, y_test)))``: kind
        is "mnist" or "digits"; x float32 in [0, 1], y uint8 class labels.

    Raises:
        FileNotFoundError: if ``data`` was given but does not hold the files
            (an explicit request is not silently replaced by another dataset).
        ValueError: if the MNIST files are corrupt.
    """
    directory = mnist.find_data_dir(data)
    if directory is None and data is not None:
        mnist.load_data(data)  # raises the detailed FileNotFoundError
    if directory is not None:
        (x_train, y_train), (x_test, y_test) = mnist.load_data(directory)
        # Scale once here: fit() then sees float32 in [0, 1], as in the Keras guide.
        x_train = x_train.astype(np.float32) / np.float32(255.0)
        x_test = x_test.astype(np.float32) / np.float32(255.0)
        return "mnist", f"MNIST from {directory}", ((x_train, y_train), (x_test, y_test))
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    return ("digits",
            "embedded 8x8 digits (MNIST files not found; pass --data DIR or set "
            "FASTNN_DATA to use MNIST)",
            ((x_train, y_train), (x_test, y_test)))


def build_model(input_shape: Tuple[int, ...], device: str):
    """The Keras getting-started MLP, compiled as in the guide."""
    # Imported here so that this module (and its --help) loads even where the
    # model API or the compiled kernels are unavailable.
    from fastnn import Sequential
    from fastnn.layers import Dense, Flatten

    model = Sequential(
        [
            Flatten(input_shape=tuple(input_shape)),
            Dense(128, activation="relu"),
            Dense(NUM_CLASSES, activation="softmax"),
        ],
        device=device,
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _accuracy_from(result) -> float:
    """evaluate() returns [loss, accuracy] when metrics were compiled in."""
    if isinstance(result, dict):
        return float(result["accuracy"])
    values: List[float] = list(np.ravel(result))
    return float(values[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the example.

    Args:
        argv: command-line arguments without the program name; None reads
            ``sys.argv``.

    Returns:
        The process exit status: 0 on success, 1 when the data cannot be read.
    """
    args = _parse_args(argv)
    try:
        kind, description, ((x_train, y_train), (x_test, y_test)) = load_dataset(args.data)
    except FileNotFoundError as exc:
        print(f"error: {exc}\n(--data DIR is that directory here; without --data the "
              "example falls back to the embedded digits.)", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from fastnn.utils import set_random_seed, to_categorical

    set_random_seed(args.seed)
    epochs = args.epochs
    if epochs is None:
        epochs = MNIST_EPOCHS if kind == "mnist" else DIGITS_EPOCHS
    image_shape = x_train.shape[1:]

    print(f"dataset: {description}")
    print(f"  train {x_train.shape[0]} x {image_shape}, test {x_test.shape[0]}; "
          f"epochs {epochs}, batch size {args.batch_size}, device {args.device}")
    y_train_1h = to_categorical(y_train, NUM_CLASSES)
    y_test_1h = to_categorical(y_test, NUM_CLASSES)

    model = build_model(image_shape, args.device)
    start = time.perf_counter()
    model.fit(x_train, y_train_1h, batch_size=args.batch_size, epochs=epochs,
              validation_data=(x_test, y_test_1h), verbose=args.verbose)
    elapsed = time.perf_counter() - start

    accuracy = _accuracy_from(model.evaluate(x_test, y_test_1h, verbose=0))
    print(f"training took {elapsed:.1f} s")
    print(f"test accuracy: {accuracy:.4f}")
    if args.save:
        model.save(args.save)
        print(f"model saved to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
