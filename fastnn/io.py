"""Safe model files: the safetensors layout, written atomically, read defensively.

A file is::

    u64 little-endian N | N bytes of UTF-8 JSON header (space padded to 8) | tensor bytes

The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}`` (offsets
relative to the start of the tensor bytes) and may hold ``"__metadata__"``, a flat
``{str: str}`` object. fastnn keeps its structured state (architecture, compile config,
training state) there as JSON text under ``fastnn.*`` keys, and always stamps
``fastnn.format_version``. Any safetensors reader can open these files, and
:func:`read_tensors` opens files written by the ``safetensors`` package.

Nothing here unpickles, evaluates or imports compiled code: loading a file runs no code
from it. The reader checks every size and offset against the file before it allocates,
so a hostile or damaged file costs at most its own size in memory and raises
:class:`FileFormatError`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import struct
import sys
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np

__all__ = [
    "FORMAT_VERSION", "FileFormatError", "check_format_version", "json_metadata",
    "read_metadata", "read_tensors", "write_tensors",
]

#: Version of fastnn's use of the layout (the ``fastnn.*`` metadata keys). Bump it when a
#: reader of the old version would misread a new file.
FORMAT_VERSION = 1

VERSION_KEY = "fastnn.format_version"
METADATA_KEY = "__metadata__"
DEFAULT_MAX_HEADER_BYTES = 100 * 2**20

PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype tag <-> little-endian NumPy dtype. Only tags NumPy can represent:
# BF16 and the F8 variants have no NumPy dtype, so such files are refused by name.
_DTYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_TAG_OF_KIND = {(dt.kind, dt.itemsize): tag for tag, dt in _DTYPES.items()}
_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_VERSION_RE = re.compile(r"[0-9]{1,9}")
_INTP_MAX = int(np.iinfo(np.intp).max)


class FileFormatError(ValueError):
    """A model file is damaged, hostile, or from a newer fastnn."""


# --------------------------------------------------------------------------- writing


def _tag_for(name: str, arr: np.ndarray) -> str:
    tag = _TAG_OF_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if tag is None or arr.dtype.fields is not None or arr.dtype.subdtype is not None:
        raise TypeError(
            f"tensors[{name!r}] has dtype {arr.dtype}, which the file format cannot hold; "
            f"supported: {', '.join(str(_DTYPES[t]) for t in _DTYPES)}")
    return tag


def _metadata_strings(metadata: Mapping[str, Any]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {key!r}")
        if isinstance(value, str):
            out[key] = value
            continue
        try:
            # sort_keys: the same state always gives the same bytes on disk.
            out[key] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata[{key!r}] is not JSON-serialisable: {exc}") from None
    given = out.get(VERSION_KEY)
    if given is not None and given != str(FORMAT_VERSION):
        raise ValueError(
            f"metadata[{VERSION_KEY!r}]={given!r}: this fastnn writes format version "
            f"{FORMAT_VERSION}; leave the key out and it is filled in")
    out[VERSION_KEY] = str(FORMAT_VERSION)
    return out


def _plan(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
          ) -> Tuple[bytes, List[np.ndarray]]:
    """Validate everything and build the header before any file is touched."""
    if not isinstance(tensors, Mapping):
        raise TypeError("tensors must be a mapping of name -> ndarray, "
                        f"got {type(tensors).__name__}")
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    items = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == METADATA_KEY:
            raise ValueError(f"{METADATA_KEY!r} is reserved and cannot name a tensor")
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(f"tensors[{name!r}] must be a numpy array, got {type(value).__name__}")
        arr = np.asarray(value)
        tag = _tag_for(name, arr)
        # Little-endian and C order on disk whatever the machine or the array's strides.
        arr = np.require(arr.astype(_DTYPES[tag], copy=False), requirements="C")
        items.append((name, tag, arr))
    # Largest items first keeps every tensor aligned to its itemsize once the data
    # section starts on an 8-byte boundary (the stable sort keeps the caller's order).
    items.sort(key=lambda t: -t[2].dtype.itemsize)

    header: Dict[str, Any] = {METADATA_KEY: _metadata_strings(metadata)}
    offset = 0
    for name, tag, arr in items:
        header[name] = {"dtype": tag, "shape": [int(d) for d in arr.shape],
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a tensor name or metadata string is not valid Unicode: {exc}") from None
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, [arr for _, _, arr in items]


def _create_temp(directory: str, base: str) -> Tuple[int, str]:
    # Like tempfile.mkstemp (O_EXCL, unguessable name, same directory so os.replace is a
    # rename) but with mode 0o666 so the saved file gets the usual umask permissions
    # instead of mkstemp's 0o600.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable. Platforms or filesystems that cannot fsync a
    # directory (Windows, some network filesystems) say so with these errors; the file's
    # own bytes were already fsynced, so we carry on there.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(fd)


def write_tensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                  metadata: Mapping[str, Any]) -> None:
    """Writes tensors and metadata to one safetensors file, atomically.

    The bytes go to a temporary file in the target's directory, which is flushed,
    fsynced and then renamed onto ``path``. A crash or kill at any moment leaves either
    the previous file or the new one at ``path``, never a mixture (a killed process may
    leave a ``.<name>.*.tmp`` file beside it).

    Args:
        path: Destination file.
        tensors: Name -> array. Supported dtypes: bool, (u)int8/16/32/64,
            float16/32/64. Any byte order and strides; stored little-endian, C order.
        metadata: Key -> value. ``str`` values are stored verbatim; anything else is
            stored as its JSON text (read it back with :func:`json_metadata`).
            ``fastnn.format_version`` is filled in.

    Raises:
        TypeError: A name is not a str, a value is not an array, a dtype is
            unsupported, or a metadata value is not JSON-serialisable.
        ValueError: A tensor is named ``__metadata__``, a string is not valid
            Unicode, or metadata carries a different ``fastnn.format_version``.
        OSError: The file could not be written; ``path`` is then unchanged.
    """
    path = os.fspath(path)
    prefix, arrays = _plan(tensors, metadata)
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = _create_temp(directory, base)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(prefix)
            for arr in arrays:
                if arr.size:
                    # uint8 view of the C-ordered buffer: no copy of the tensor.
                    f.write(arr.reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


# --------------------------------------------------------------------------- reading


# (name, dtype, shape, begin, end) of one validated header entry.
_Entry = Tuple[str, np.dtype, Tuple[int, ...], int, int]


class _Reject(Exception):
    """Internal: carries a problem description up to where the file name is known."""


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"header repeats the key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _Reject(f"header contains {name}, which is not valid JSON")


def _is_int(x: Any) -> bool:
    return type(x) is int  # bool is an int subclass and is not a size


def _parse_header(raw: bytes) -> Tuple[Dict[str, str], List[_Entry]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.startswith("{"):
        raise _Reject("header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Reject:
        raise
    except RecursionError:
        raise _Reject("header JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and over-long integer literals
        raise _Reject(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _Reject(f"header must be a JSON object, got {type(header).__name__}")

    raw_meta = header.pop(METADATA_KEY, None)
    if raw_meta is None:
        meta: Dict[str, str] = {}
    elif isinstance(raw_meta, dict):
        for key, value in raw_meta.items():
            if not isinstance(value, str):
                raise _Reject(f"metadata value for {key!r} must be a string, "
                              f"got {type(value).__name__}")
        meta = raw_meta
    else:
        raise _Reject(f"{METADATA_KEY!r} must be an object of strings, "
                      f"got {type(raw_meta).__name__}")

    entries = []
    for name, entry in header.items():
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise _Reject(f"{where}: entry must be an object, got {type(entry).__name__}")
        if set(entry) != _ENTRY_KEYS:
            missing = sorted(_ENTRY_KEYS - set(entry))
            extra = sorted(set(entry) - _ENTRY_KEYS)
            raise _Reject(f"{where}: entry must have exactly dtype, shape, data_offsets"
                          f" (missing {missing}, unexpected {extra})")
        tag = entry["dtype"]
        if not isinstance(tag, str):
            raise _Reject(f"{where}: dtype must be a string, got {tag!r}")
        dtype = _DTYPES.get(tag)
        if dtype is None:
            raise _Reject(f"{where}: dtype {tag!r} is not supported "
                          f"(supported: {', '.join(_DTYPES)})")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _Reject(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        offsets = entry["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            raise _Reject(f"{where}: data_offsets must be [begin, end] non-negative integers, "
                          f"got {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise _Reject(f"{where}: data_offsets {offsets} end before they begin")
        # Python ints: no overflow however large the shape claims to be.
        count = 1
        nonzero = 1
        for d in shape:
            count *= d
            nonzero *= max(d, 1)
        if count * dtype.itemsize != end - begin:
            raise _Reject(f"{where}: shape {shape} of {tag} needs {count * dtype.itemsize} bytes "
                          f"but data_offsets {offsets} span {end - begin}")
        # NumPy refuses even empty arrays whose non-zero dims overflow its index type.
        if nonzero * dtype.itemsize > _INTP_MAX or len(shape) > 64:
            raise _Reject(f"{where}: shape {shape} is too large for NumPy")
        entries.append((name, dtype, tuple(shape), begin, end))
    return meta, entries


def _check_layout(entries: List[_Entry], data_size: int) -> List[_Entry]:
    ordered = sorted(entries, key=lambda e: (e[3], e[4]))
    position = 0
    previous = None
    for name, _, _, begin, end in ordered:
        if end > data_size:
            raise _Reject(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the end of "
                          f"the data section ({data_size} bytes; the file is truncated?)")
        if begin < position:
            raise _Reject(f"tensor {name!r}: data_offsets [{begin}, {end}] overlap tensor "
                          f"{previous!r}, which ends at {position}")
        if begin > position:
            raise _Reject(f"tensor {name!r}: gap of {begin - position} unused bytes before it "
                          f"(data must be contiguous)")
        position = end
        previous = name
    if position != data_size:
        raise _Reject(f"{data_size - position} unexpected bytes after the last tensor")
    return ordered


def _open_checked(path: str, max_header_bytes: int):
    """Open ``path``, check the framing and return (file, size, header bytes)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _Reject("not a regular file")
    f = open(path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _Reject(f"file is {size} bytes, too short for the 8-byte header length "
                          "(empty or truncated)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > max_header_bytes:
            raise _Reject(f"header length {n} exceeds the limit of {max_header_bytes} bytes "
                          "(corrupt, or raise max_header_bytes)")
        if n > size - 8:
            raise _Reject(f"header length {n} exceeds the {size - 8} bytes that follow it "
                          "(truncated or corrupt)")
        raw = f.read(n)
        if len(raw) != n:
            raise _Reject("file shrank while being read")
        return f, size, raw
    except BaseException:
        f.close()
        raise


def _fail(path: str, problem: str) -> FileFormatError:
    return FileFormatError(f"{path}: not a valid fastnn/safetensors file: {problem}")


def _check_limit(max_header_bytes: int) -> None:
    if not _is_int(max_header_bytes) or max_header_bytes < 2:
        raise ValueError(f"max_header_bytes must be an int >= 2, got {max_header_bytes!r}")


def read_metadata(path: PathLike, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
                  ) -> Dict[str, str]:
    """Reads only the metadata of a file, after validating its whole header and layout.

    Args:
        path: The file.
        max_header_bytes: Refuse headers longer than this.

    Returns:
        The ``__metadata__`` strings (empty if the file has none).

    Raises:
        FileFormatError: The file is not a well-formed safetensors file.
        OSError: The file cannot be opened or read.
    """
    path = os.fspath(path)
    _check_limit(max_header_bytes)
    try:
        f, size, raw = _open_checked(path, max_header_bytes)
        with f:
            meta, entries = _parse_header(raw)
            _check_layout(entries, size - 8 - len(raw))
    except _Reject as exc:
        raise _fail(path, str(exc)) from None
    return meta


def read_tensors(path: PathLike, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
                 ) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Reads a safetensors file, checking everything before trusting anything.

    The header length, every dtype, shape and offset is checked against the file's
    actual size before any tensor is allocated, so memory use is bounded by the file
    size whatever the header claims. Tensors must tile the data section exactly (no
    gaps, overlaps or trailing bytes), as the safetensors format requires.

    Args:
        path: The file.
        max_header_bytes: Refuse headers longer than this.

    Returns:
        ``(tensors, metadata)``: name -> array (native-endian, C-contiguous, writeable,
        owning its memory), in the header's order; and the ``__metadata__`` strings.

    Raises:
        FileFormatError: The file is truncated, corrupt, hostile, or uses a dtype NumPy
            cannot hold. The message names the file and the problem.
        OSError: The file cannot be opened or read.
        ValueError: ``max_header_bytes`` is not a sensible int.
    """
    path = os.fspath(path)
    _check_limit(max_header_bytes)
    try:
        f, size, raw = _open_checked(path, max_header_bytes)
        with f:
            meta, entries = _parse_header(raw)
            ordered = _check_layout(entries, size - 8 - len(raw))
            tensors: Dict[str, np.ndarray] = {}
            # Offset order is file order: one sequential pass, no seeks.
            for name, dtype, shape, begin, end in ordered:
                try:
                    arr = np.empty(shape, dtype=dtype)
                except (ValueError, MemoryError) as exc:
                    raise _Reject(f"tensor {name!r}: cannot allocate shape {list(shape)}: "
                                  f"{exc}") from None
                view = arr.reshape(-1).view(np.uint8)
                got = 0
                while got < view.size:
                    n = f.readinto(view[got:].data)
                    if not n:
                        raise _Reject(f"tensor {name!r}: file ended early "
                                      "(it shrank while being read)")
                    got += n
                tensors[name] = arr
    except _Reject as exc:
        raise _fail(path, str(exc)) from None
    if sys.byteorder == "big":
        tensors = {k: v.astype(v.dtype.newbyteorder("="), copy=False) for k, v in tensors.items()}
    # Hand back in the header's order, which is also the writer's order.
    return {name: tensors[name] for name, *_ in entries}, meta


# --------------------------------------------------------------------------- metadata


def check_format_version(meta: Mapping[str, str], path: PathLike | None = None) -> int:
    """Checks that this fastnn can read a file's fastnn metadata.

    Args:
        meta: Metadata as returned by :func:`read_tensors`.
        path: The file, for the error message.

    Returns:
        The file's format version.

    Raises:
        FileFormatError: The version is missing or malformed, or the file was written
            by a newer fastnn.
    """
    where = f"{os.fspath(path)}: " if path is not None else ""
    value = meta.get(VERSION_KEY)
    if value is None:
        raise FileFormatError(f"{where}no {VERSION_KEY!r} in the metadata: this is not a "
                              "fastnn model file (a plain safetensors file?)")
    if not isinstance(value, str) or not _VERSION_RE.fullmatch(value) or int(value) < 1:
        raise FileFormatError(f"{where}{VERSION_KEY!r} is {value!r}, expected a positive "
                              "integer: the file is corrupt")
    version = int(value)
    if version > FORMAT_VERSION:
        raise FileFormatError(
            f"{where}written by a newer fastnn (file format version {version}; this fastnn "
            f"reads up to version {FORMAT_VERSION}). Upgrade fastnn to load it.")
    return version


_MISSING = object()


def json_metadata(meta: Mapping[str, str], key: str, default: Any = _MISSING, *,
                  path: PathLike | None = None) -> Any:
    """Decodes a metadata value that :func:`write_tensors` stored as JSON text.

    Args:
        meta: Metadata as returned by :func:`read_tensors`.
        key: The key, e.g. ``"fastnn.config"``.
        default: Returned when the key is absent; without it a missing key is an error.
        path: The file, for the error message.

    Returns:
        The decoded value.

    Raises:
        FileFormatError: The key is missing (and no default) or its value is not JSON.
    """
    where = f"{os.fspath(path)}: " if path is not None else ""
    value = meta.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise FileFormatError(f"{where}metadata has no {key!r}")
        return default
    if not isinstance(value, str):
        raise FileFormatError(f"{where}metadata[{key!r}] is not a string")
    try:
        return json.loads(value, object_pairs_hook=_no_duplicates)
    except _Reject as exc:
        raise FileFormatError(f"{where}metadata[{key!r}]: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FileFormatError(f"{where}metadata[{key!r}] is not valid JSON: {exc}") from None
