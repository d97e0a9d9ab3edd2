"""Fuzzing fastnn.io.read_tensors: any byte string either loads correctly or raises
FileFormatError. No other exception, no crash, no allocation beyond the file's size."""
import json
import os
import re
import struct
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastnn.io import FileFormatError, read_tensors, write_tensors  # noqa: E402

try:
    import safetensors.numpy as _st
except ImportError:  # the cross-check is optional
    _st = None

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_CATEGORY = re.compile(r"'[^']*'|\[[^]]*\]|\d+")

ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "U32": 4, "I32": 4,
            "F32": 4, "U64": 8, "I64": 8, "F64": 8}
NUMPY = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
         "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="fastnn-io-fuzz-") as d:
        yield d


def _valid_files():
    rng = np.random.default_rng(3)
    sets = [
        {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
         "m": rng.random(7) < 0.5, "e": np.zeros((0, 2), np.float16)},
        {"s": np.array(1.25), "u": np.arange(9, dtype=np.uint16).reshape(3, 3)},
        {},
    ]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, tensors in enumerate(sets):
            p = os.path.join(d, f"{i}")
            write_tensors(p, tensors, {"fastnn.config": {"layers": [1, 2, 3]}, "k": "v"})
            with open(p, "rb") as f:
                out.append(f.read())
    return out


VALID = _valid_files()


def _load_or_reject(workdir, blob):
    """Read ``blob`` from disk; return (tensors, meta) or None if cleanly rejected."""
    path = os.path.join(workdir, "f.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    try:
        tensors, meta = read_tensors(path)
    except FileFormatError as exc:
        assert path in str(exc)
        # Statistics (pytest --hypothesis-show-statistics) show which checks fired.
        event("rejected: " + _CATEGORY.sub("#", str(exc).split(": ", 2)[-1])[:40])
        return None
    event("loaded")
    # Whatever loads must be well formed and no bigger than the file.
    assert sum(a.nbytes for a in tensors.values()) <= len(blob)
    for a in tensors.values():
        assert isinstance(a, np.ndarray) and a.dtype.isnative and a.flags.c_contiguous
        assert a.flags.owndata and a.flags.writeable
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    if _st is not None:
        # Whatever we accept, the reference implementation accepts with the same contents.
        theirs = _st.load_file(path)
        assert set(theirs) == set(tensors)
        for name, a in tensors.items():
            assert theirs[name].shape == a.shape and theirs[name].dtype == a.dtype
            assert theirs[name].tobytes() == a.tobytes()
    return tensors, meta


def _expected_from_header(blob):
    """Independent decode of a blob we built ourselves and know to be valid."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    header.pop("__metadata__", None)
    return {name: np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]],
                                dtype=NUMPY[e["dtype"]]).reshape(e["shape"])
            for name, e in header.items()}


# --------------------------------------------------------------------------- (a) mutations


@FUZZ
@given(base=st.sampled_from(range(len(VALID))),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.none() | st.integers(0, 10**6),
       tail=st.binary(max_size=16))
def test_mutated_valid_files(workdir, base, edits, cut, tail):
    blob = bytearray(VALID[base])
    for pos, value in edits:
        blob[pos % len(blob)] = value
    if cut is not None:
        del blob[cut % (len(blob) + 1):]
    blob += tail
    result = _load_or_reject(workdir, bytes(blob))
    if bytes(blob) == VALID[base]:
        assert result is not None


@FUZZ
@given(base=st.sampled_from(range(len(VALID))),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(b"0123456789-.e[]{},\" ")),
                      min_size=1, max_size=4))
def test_mutated_header_text(workdir, base, edits):
    # Rewriting characters of the header text makes lying sizes, offsets and shapes
    # far more often than flipping random bytes does.
    blob = bytearray(VALID[base])
    (n,) = struct.unpack("<Q", blob[:8])
    digits = [8 + i for i in range(n) if chr(blob[8 + i]) in "0123456789"]
    for pos, value in edits:
        blob[digits[pos % len(digits)]] = value
    _load_or_reject(workdir, bytes(blob))


# --------------------------------------------------------------------------- (b) garbage


@FUZZ
@given(blob=st.binary(max_size=600))
def test_random_bytes(workdir, blob):
    _load_or_reject(workdir, blob)


@FUZZ
@given(header=st.binary(max_size=300), data=st.binary(max_size=64),
       lie=st.none() | st.integers(0, 2**64 - 1))
def test_random_header_bytes_with_plausible_framing(workdir, header, data, lie):
    n = len(header) if lie is None else lie
    _load_or_reject(workdir, struct.pack("<Q", n) + header + data)


# --------------------------------------------------------------------------- (c) structure

_DIMS = st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63,
                                                       2**64 - 1, 2**64, 2**100]),
                  st.integers(-3, -1), st.booleans(), st.floats(allow_nan=False), st.none(),
                  st.text(max_size=2))
_OFFSETS = st.one_of(st.integers(0, 128), st.sampled_from([2**32, 2**63, 2**64, 2**64 + 4]),
                     st.integers(-8, -1), st.floats(allow_nan=False), st.booleans())
_DTYPE_TAGS = st.one_of(st.sampled_from(sorted(ITEMSIZE)),
                        st.sampled_from(["BF16", "F8_E4M3", "C64", "f32", "", "F32 "]),
                        st.integers(), st.none())


@st.composite
def _plausible_entry(draw):
    # Right types, sizes that agree or nearly agree: reaches the layout checks
    # (out of range, overlap, gap, trailing bytes) rather than stopping at types.
    tag = draw(st.sampled_from(sorted(ITEMSIZE)))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    begin = draw(st.integers(0, 40))
    end = begin + int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[tag] + draw(
        st.sampled_from([0, 0, 0, 0, 1, -1, 8]))
    return {"dtype": tag, "shape": shape, "data_offsets": [begin, end]}


@st.composite
def _hostile_entry(draw):
    if draw(st.booleans()):
        return draw(_plausible_entry())
    entry = {}
    if draw(st.integers(0, 9)):
        entry["dtype"] = draw(_DTYPE_TAGS)
    if draw(st.integers(0, 9)):
        entry["shape"] = draw(st.lists(_DIMS, max_size=4) | st.integers() | st.text(max_size=3))
    if draw(st.integers(0, 9)):
        entry["data_offsets"] = draw(st.lists(_OFFSETS, min_size=0, max_size=3))
    if not draw(st.integers(0, 9)):
        entry["extra"] = draw(st.integers())
    return entry if draw(st.integers(0, 19)) else draw(st.integers() | st.lists(st.integers()))


_META = st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3) | \
    st.dictionaries(st.text(max_size=5), st.integers() | st.none() | st.text(), max_size=3) | \
    st.integers() | st.lists(st.text(max_size=3), max_size=2)


@FUZZ
@given(entries=st.dictionaries(st.text(max_size=6), _hostile_entry(), max_size=4),
       meta=st.none() | _META, data=st.binary(max_size=64),
       pad=st.integers(0, 9))
def test_random_headers(workdir, entries, meta, data, pad):
    header = dict(entries)
    if meta is not None:
        header["__metadata__"] = meta
    text = json.dumps(header).encode() + b" " * pad
    result = _load_or_reject(workdir, struct.pack("<Q", len(text)) + text + data)
    if result is not None:
        tensors, _ = result
        expected = {k: v for k, v in header.items() if k != "__metadata__"}
        assert set(tensors) == set(expected)
        for name, e in expected.items():
            begin, end = e["data_offsets"]
            assert tensors[name].shape == tuple(e["shape"])
            assert tensors[name].tobytes() == data[begin:end]


@st.composite
def _consistent_file(draw):
    """A valid file in any tensor order, with optionally one lie planted in it."""
    names = draw(st.lists(st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
                          unique=True, max_size=5))
    entries, blobs, offset = {}, [], 0
    for name in names:
        tag = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[tag]
        entries[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        blob = draw(st.binary(min_size=nbytes, max_size=nbytes))
        if tag == "BOOL":  # only 0 and 1 are booleans
            blob = bytes(b & 1 for b in blob)
        blobs.append(blob)
        offset += nbytes
    order = draw(st.permutations(list(entries)))
    header = {name: entries[name] for name in order}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                      max_size=3))
    lie = None
    if entries and draw(st.booleans()):
        victim = draw(st.sampled_from(sorted(entries)))
        field = draw(st.sampled_from(["begin", "end", "shift", "dim", "dtype"]))
        delta = draw(st.sampled_from([-4, -1, 1, 2, 4, 2**40, 2**64]))
        e = header[victim]
        if field == "dtype":
            same = [t for t in ITEMSIZE if ITEMSIZE[t] != ITEMSIZE[e["dtype"]]]
            e["dtype"] = draw(st.sampled_from(sorted(same)))
        elif field == "dim":
            e["shape"] = e["shape"] + [draw(st.sampled_from([0, 2, 3, 2**40, 2**64]))]
        elif field == "shift":  # same size, wrong place: overlap, gap or out of range
            e["data_offsets"] = [max(0, o + delta) for o in e["data_offsets"]]
        else:
            i = 0 if field == "begin" else 1
            e["data_offsets"][i] = max(0, e["data_offsets"][i] + delta)
        lie = (victim, field)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8 if draw(st.booleans()) else 0)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs), lie


@FUZZ
@given(case=_consistent_file())
def test_structured_files(workdir, case):
    blob, lie = case
    result = _load_or_reject(workdir, blob)
    if lie is None:
        assert result is not None, "a valid file was rejected"
        tensors, _ = result
        expected = _expected_from_header(blob)
        assert list(tensors) == list(expected)
        for name, want in expected.items():
            assert tensors[name].dtype == want.dtype.newbyteorder("=")
            np.testing.assert_array_equal(tensors[name], want)
