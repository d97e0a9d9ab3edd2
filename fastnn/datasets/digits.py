"""The embedded UCI handwritten digits: 1797 images of 8x8 pixels, 10 classes.

The data ships inside the package (``digits.csv.gz``, the test set of the UCI
"Optical Recognition of Handwritten Digits" data, Alpaydin & Kaynak 1998,
CC BY 4.0), so examples and tests always have a real dataset to train on
without a network or any download. Each CSV row holds 64 pixel counts (0..16,
row-major 8x8) followed by the class label 0..9; there is no header line.
"""
from __future__ import annotations

import functools
import gzip
import zlib
from importlib import resources
from pathlib import Path
from typing import Tuple, Union

import numpy as np

__all__ = ["load_data", "NUM_CLASSES", "IMAGE_SHAPE", "MAX_PIXEL"]

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8)
MAX_PIXEL = 16
_NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
_RESOURCE = "digits.csv.gz"


def _parse_csv(source: Union[str, Path, bytes]) -> Tuple[np.ndarray, np.ndarray]:
    """Parses and validates digits CSV data.

    Args:
        source: a path to the CSV file, or its bytes. Either may be
            gzip-compressed; compression is detected from the content.

    Returns:
        ``(pixels, labels)``: uint8 arrays of shape (rows, 64) and (rows,).

    Raises:
        ValueError: naming the line and the problem when a row does not have
            65 integer fields, a pixel is outside 0..16, a label is outside
            0..9, or the data is empty or not valid gzip/ASCII.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        origin = "digits data"
    else:
        data = Path(source).read_bytes()
        origin = str(source)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ValueError(f"{origin}: corrupt gzip data ({exc})") from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{origin}: not an ASCII CSV file ({exc})") from exc

    width = _NUM_PIXELS + 1
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        if len(fields) != width:
            raise ValueError(
                f"{origin}: line {lineno} has {len(fields)} columns, expected {width} "
                f"({_NUM_PIXELS} pixels then the label)"
            )
        try:
            values = [int(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_int(f))
            raise ValueError(
                f"{origin}: line {lineno} holds a non-integer field {bad.strip()!r}"
            ) from None
        rows.append(values)
    if not rows:
        raise ValueError(f"{origin}: no data rows")

    table = np.asarray(rows, dtype=np.int64)
    pixels, labels = table[:, :_NUM_PIXELS], table[:, _NUM_PIXELS]
    _check_range(origin, pixels, 0, MAX_PIXEL, "pixel value", text)
    _check_range(origin, labels, 0, NUM_CLASSES - 1, "label", text)
    return pixels.astype(np.uint8), labels.astype(np.uint8)


def _is_int(field: str) -> bool:
    try:
        int(field)
    except ValueError:
        return False
    return True


def _check_range(origin: str, values: np.ndarray, lo: int, hi: int, what: str,
                 text: str) -> None:
    bad = np.argwhere((values < lo) | (values > hi))
    if bad.size:
        row = int(bad[0][0])
        value = int(values[tuple(bad[0])])
        # Blank lines are skipped when parsing, so map the row back to its line.
        lineno = [i for i, line in enumerate(text.splitlines(), start=1)
                  if line.strip()][row]
        raise ValueError(
            f"{origin}: line {lineno}: {what} {value} is out of range {lo}..{hi}"
        )


@functools.lru_cache(maxsize=1)
def _embedded() -> Tuple[np.ndarray, np.ndarray]:
    blob = resources.files(__package__).joinpath(_RESOURCE).read_bytes()
    pixels, labels = _parse_csv(blob)
    # The cached arrays are shared between calls; freeze them so that a caller
    # who modifies what load_data returned cannot corrupt the next call.
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of a split that keeps each class's share in both parts."""
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(members.size)]
        n_test = int(round(members.size * test_fraction))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    # Interleave classes so that unshuffled batches still see every digit.
    train = np.concatenate(train_parts)
    test = np.concatenate(test_parts)
    return train[rng.permutation(train.size)], test[rng.permutation(test.size)]


def load_data(test_fraction: float = 0.2, seed: int = 0
              ) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads the embedded 8x8 digits, split into training and test sets.

    The split is stratified (each class keeps its share in both parts) and
    depends only on ``seed``: the same arguments always give the same arrays.

    Args:
        test_fraction: share of each class that goes to the test set, strictly
            between 0 and 1.
        seed: seed of the ``numpy.random.default_rng`` that draws the split.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: x float32 of shape
        (count, 8, 8) scaled to [0, 1] (pixel counts divided by 16), y uint8 of
        shape (count,) with values 0..9. Counts sum to 1797.

    Raises:
        ValueError: if ``test_fraction`` is not strictly between 0 and 1, or the
            embedded data file is corrupt.
    """
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be strictly between 0 and 1, got {test_fraction}"
        )
    pixels, labels = _embedded()
    train_idx, test_idx = _stratified_split(labels, test_fraction, int(seed))
    if train_idx.size == 0 or test_idx.size == 0:
        raise ValueError(
            f"test_fraction={test_fraction} leaves an empty "
            f"{'training' if train_idx.size == 0 else 'test'} set"
        )

    def take(idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = pixels[idx].astype(np.float32) / np.float32(MAX_PIXEL)
        return x.reshape((idx.size,) + IMAGE_SHAPE), labels[idx]

    return take(train_idx), take(test_idx)
