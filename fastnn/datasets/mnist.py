"""MNIST handwritten digits, read from local IDX files.

The loader never touches the network: it reads the four standard IDX files,
gzip-compressed or not, from a directory on disk. Where that directory is
looked for, in order:

1. the ``path`` argument, when given (and then only there);
2. ``$FASTNN_DATA/mnist`` when the ``FASTNN_DATA`` environment variable is set;
3. ``~/.fastnn/datasets/mnist``.

Every file is validated before it is trusted: magic number, element type,
number of dimensions, declared sizes against the real byte length, label range,
and agreement between images and labels. Memory is only ever allocated for
bytes that are actually present in the file, so a corrupt header that claims
billions of records fails fast instead of exhausting memory.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "FILES",
    "NUM_CLASSES",
    "find_data_dir",
    "load_data",
    "read_images",
    "read_labels",
]

PathLike = Union[str, "os.PathLike[str]"]

# Keys are what load_data calls each part; values are the standard file names.
FILES: Dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

NUM_CLASSES = 10

MAGIC_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dimensions
MAGIC_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dimension
_DTYPE_UBYTE = 0x08
_IDX_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"
# Decompressed data is read in pieces of this size, so memory follows the
# bytes that really exist rather than what a header claims.
_CHUNK = 1 << 22

_ENV_VAR = "FASTNN_DATA"


# ---------------------------------------------------------------------------
# locating the files
# ---------------------------------------------------------------------------

def _candidate_dirs(path: Optional[PathLike]) -> List[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    dirs = []
    env = os.environ.get(_ENV_VAR, "")
    if env:
        dirs.append(Path(env).expanduser() / "mnist")
    dirs.append(Path.home() / ".fastnn" / "datasets" / "mnist")
    return dirs


def _locate(directory: Path) -> Dict[str, Optional[Path]]:
    """Map each part to its file in ``directory`` (plain preferred over .gz)."""
    found: Dict[str, Optional[Path]] = {}
    for key, name in FILES.items():
        found[key] = None
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                found[key] = candidate
                break
    return found


def find_data_dir(path: Optional[PathLike] = None) -> Optional[Path]:
    """Finds the directory that holds all four MNIST IDX files.

    Args:
        path: directory to look in. When None, ``$FASTNN_DATA/mnist`` (if the
            variable is set) and then ``~/.fastnn/datasets/mnist`` are tried.

    Returns:
        The first searched directory in which every file is present (each
        either plain or with a ``.gz`` suffix), or None when there is none.
        The files' contents are not checked here; ``load_data`` does that.
    """
    for directory in _candidate_dirs(path):
        if directory.is_dir() and all(p is not None for p in _locate(directory).values()):
            return directory
    return None


def _not_found_error(dirs: List[Path], explicit: bool) -> FileNotFoundError:
    lines = ["MNIST data files not found. Searched:"]
    for directory in dirs:
        if not directory.is_dir():
            lines.append(f"  {directory}  (directory does not exist)")
            continue
        missing = [FILES[k] + "[.gz]" for k, p in _locate(directory).items() if p is None]
        lines.append(f"  {directory}  (missing: {', '.join(missing)})")
    lines.append(
        "The four files " + ", ".join(FILES.values()) + " (each may be gzipped, "
        "with a .gz suffix) must all be in one directory."
    )
    if explicit:
        lines.append("Pass path= the directory that holds them.")
    else:
        if not os.environ.get(_ENV_VAR, ""):
            lines.append(f"({_ENV_VAR} is not set.)")
        lines.append(
            f"Put them in ~/.fastnn/datasets/mnist, or set {_ENV_VAR}=DIR so that "
            f"DIR/mnist holds them, or pass path= their directory. "
            "fastnn never downloads data."
        )
    return FileNotFoundError("\n".join(lines))


# ---------------------------------------------------------------------------
# reading and validating one IDX file
# ---------------------------------------------------------------------------

def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to n bytes, looping because compressed streams may return less."""
    parts = []
    left = n
    while left > 0:
        piece = stream.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _describe_dims(dims: Tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in dims)


def _read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions.

    ``what`` ("images" or "labels") only shapes the error messages.
    """
    path = Path(path)
    magic_expected = MAGIC_IMAGES if ndim == 3 else MAGIC_LABELS
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _parse_idx(stream, path, ndim, magic_expected, what, None)
            size = os.fstat(raw.fileno()).st_size
            return _parse_idx(raw, path, ndim, magic_expected, what, size)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # A damaged gzip stream: report it as a corrupt file, like any other.
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc


def _parse_idx(stream: BinaryIO, path: Path, ndim: int, magic_expected: int,
               what: str, file_size: Optional[int]) -> np.ndarray:
    header = _read_exact(stream, 4)
    if len(header) < 4:
        raise ValueError(
            f"{path}: file too short for an IDX header ({len(header)} bytes; "
            f"an IDX {what} file starts with the 4-byte magic number {magic_expected})"
        )
    magic = int.from_bytes(header, "big")
    if header[0] != 0 or header[1] != 0:
        hint = ""
        if header[2] == 0 and header[3] == 0 and header[1] == _DTYPE_UBYTE:
            hint = " (the bytes look little-endian; IDX headers are big-endian)"
        raise ValueError(
            f"{path}: not an IDX file: magic number 0x{magic:08X} ({magic}), "
            f"expected {magic_expected} (0x{magic_expected:08X}) for {what}{hint}"
        )
    dtype_code, got_ndim = header[2], header[3]
    if dtype_code != _DTYPE_UBYTE:
        name = _IDX_DTYPE_NAMES.get(dtype_code, "unknown")
        raise ValueError(
            f"{path}: IDX element type 0x{dtype_code:02X} ({name}) is not supported; "
            f"MNIST files hold unsigned bytes (0x08), magic number {magic_expected}"
        )
    if got_ndim != ndim:
        other = {3: "images", 1: "labels"}.get(got_ndim)
        hint = f" (this looks like an {other} file)" if other and other != what else ""
        raise ValueError(
            f"{path}: magic number {magic} declares {got_ndim} dimension(s), expected "
            f"{magic_expected} ({ndim} dimension(s)) for an MNIST {what} file{hint}"
        )

    dims_bytes = _read_exact(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimension size(s) of 4 bytes "
            f"expected after the magic number, found {len(dims_bytes)} bytes"
        )
    dims = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], "big") for i in range(ndim))
    if dims[0] == 0:
        raise ValueError(f"{path}: header declares 0 {what}")
    if any(d == 0 for d in dims[1:]):
        raise ValueError(f"{path}: header declares an empty image size {_describe_dims(dims[1:])}")

    expected = 1
    for d in dims:
        expected *= d  # Python int: no overflow however large the header claims
    header_len = 4 + 4 * ndim

    if file_size is not None:
        # Plain file: the size on disk says at once whether the header is honest,
        # before a single data byte is read or allocated.
        actual = file_size - header_len
        if actual != expected:
            raise ValueError(_size_message(path, what, dims, expected, actual, exact=True))
        buf = bytearray(expected)
        got = stream.readinto(buf)
        if got != expected:  # the file changed under us
            raise ValueError(_size_message(path, what, dims, expected, got or 0, exact=True))
    else:
        # Compressed: the decompressed length is unknown up front, so read at most
        # expected + 1 bytes in bounded pieces; memory grows only with real data.
        buf = bytearray()
        limit = expected + 1
        while len(buf) < limit:
            piece = stream.read(min(_CHUNK, limit - len(buf)))
            if not piece:
                break
            buf += piece
        if len(buf) != expected:
            raise ValueError(
                _size_message(path, what, dims, expected, len(buf), exact=False)
            )

    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def _size_message(path: Path, what: str, dims: Tuple[int, ...], expected: int,
                  actual: int, exact: bool) -> str:
    declared = f"header declares {_describe_dims(dims)} bytes of {what} ({expected} data bytes)"
    if actual < expected:
        return f"{path}: file is truncated: {declared} but only {actual} follow the header"
    extra = f"{actual - expected}" if exact else "at least 1"
    return (f"{path}: file is longer than its header says: {declared} but "
            f"{extra} extra byte(s) follow them")


def read_images(path: PathLike) -> np.ndarray:
    """Reads one IDX images file (magic 2051), gzipped or plain.

    Args:
        path: the file. Gzip compression is detected from the content.

    Returns:
        uint8 array of shape (count, rows, cols).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if it is not a well-formed unsigned-byte
            3-D IDX file whose length matches its header.
    """
    return _read_idx(Path(path), 3, "images")


def read_labels(path: PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Reads one IDX labels file (magic 2049), gzipped or plain.

    Args:
        path: the file. Gzip compression is detected from the content.
        num_classes: labels must lie in ``0 .. num_classes - 1``.

    Returns:
        uint8 array of shape (count,).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, if it is not a well-formed unsigned-byte
            1-D IDX file whose length matches its header, or holds a label
            outside the valid range.
    """
    labels = _read_idx(Path(path), 1, "labels")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: label {int(labels[i])} at index {i} is out of range 0..{num_classes - 1} "
            f"({bad.size} label(s) out of range)"
        )
    return labels


# ---------------------------------------------------------------------------
# the public loader
# ---------------------------------------------------------------------------

def load_data(path: Optional[PathLike] = None
              ) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Loads MNIST from local IDX files, like ``keras.datasets.mnist.load_data``.

    Args:
        path: directory holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte``, each plain or gzipped with a ``.gz``
            suffix. When None, ``$FASTNN_DATA/mnist`` and then
            ``~/.fastnn/datasets/mnist`` are searched. Nothing is downloaded.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: x uint8 of shape
        (count, 28, 28) with values 0..255, y uint8 of shape (count,) with
        values 0..9. For the standard files the counts are 60000 and 10000.

    Raises:
        FileNotFoundError: when no searched directory holds all four files; the
            message names each directory searched and the files missing there.
        ValueError: when a file is corrupt (the message names the file and the
            problem), when images and labels disagree in count, or when train
            and test images differ in size.
    """
    dirs = _candidate_dirs(path)
    directory = find_data_dir(path)
    if directory is None:
        raise _not_found_error(dirs, explicit=path is not None)
    files = _locate(directory)

    splits = []
    for part in ("train", "test"):
        img_path = files[part + "_images"]
        lbl_path = files[part + "_labels"]
        assert img_path is not None and lbl_path is not None
        x = read_images(img_path)
        y = read_labels(lbl_path)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{img_path} holds {x.shape[0]} images but {lbl_path} holds "
                f"{y.shape[0]} labels; the counts must agree"
            )
        splits.append((x, y))

    (x_train, _), (x_test, _) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"training images are {_describe_dims(x_train.shape[1:])} "
            f"({files['train_images']}) but test images are "
            f"{_describe_dims(x_test.shape[1:])} ({files['test_images']})"
        )
    return splits[0], splits[1]
