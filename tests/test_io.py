"""fastnn.io: the safetensors-layout model file, its atomic writer and hardened reader."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

from fastnn.io import (FORMAT_VERSION, FileFormatError, check_format_version, json_metadata,
                       read_metadata, read_tensors, write_tensors)

ALL_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "float16", "uint32", "int32",
              "float32", "uint64", "int64", "float64"]
SHAPES = [(), (0,), (1,), (3,), (17,), (3, 0, 2), (3, 129), (2, 3, 5), (1000,)]


def _random(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype,
                                       endpoint=True))
    return np.asarray(rng.standard_normal(shape) * 1e3).astype(dtype)


def _raw_file(path, header, data=b"", *, header_bytes=None, length=None, pad=True):
    """Hand-build a file: header (object or raw bytes), data section, optional lying length."""
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _assert_rejected(path, *fragments, **kw):
    with pytest.raises(FileFormatError) as info:
        read_tensors(path, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    problem = msg[len(str(path)):]  # tmp_path holds the test's name: match after it
    for fragment in fragments:
        assert fragment in problem, msg
    return problem


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype_and_shape(tmp_path, rng, dtype):
    tensors = {f"t{i}": _random(rng, dtype, shape) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "m.safetensors"
    write_tensors(path, tensors, {})
    got, meta = read_tensors(path)
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        arr = got[name]
        assert arr.shape == want.shape and arr.dtype == want.dtype, name
        assert arr.dtype.isnative
        assert arr.flags.c_contiguous and arr.flags.writeable and arr.flags.owndata
        np.testing.assert_array_equal(arr, want)
    assert meta == {"fastnn.format_version": str(FORMAT_VERSION)}


def test_round_trip_mixed_dtypes_and_awkward_layouts(tmp_path, rng):
    base = rng.standard_normal((17, 129))
    tensors = {
        "fortran": np.asfortranarray(base.astype(np.float32)),
        "strided": base[::3, ::-2],
        "big_endian": base.astype(">f4"),
        "big_endian_int": np.arange(-50, 50, dtype=">i8"),
        "scalar": np.float32(2.5),  # a NumPy scalar is a 0-d tensor
        "empty": np.zeros((0, 7), np.int32),
        "mask": rng.random(33) < 0.3,
        "bytes": rng.integers(0, 256, 13, dtype=np.uint8),
        "naïve ✓ name with spaces/and.dots": np.array([1.5, np.nan, np.inf, -0.0]),
    }
    path = tmp_path / "m.safetensors"
    write_tensors(path, tensors, {})
    got, _ = read_tensors(path)
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        want = np.asarray(want)
        assert got[name].shape == want.shape, name
        assert got[name].dtype == want.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got[name], want)
    # NaN payload and the sign of zero survive bit for bit.
    assert got["naïve ✓ name with spaces/and.dots"].tobytes() == \
        tensors["naïve ✓ name with spaces/and.dots"].astype("<f8").tobytes()


def test_layout_on_disk(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    tensors = {"b": _random(rng, "int16", (3,)), "a": _random(rng, "float64", (2, 2)),
               "c": _random(rng, "float32", (5,))}
    write_tensors(path, tensors, {"note": "x"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    offset = 0
    for name, entry in ((k, v) for k, v in header.items() if k != "__metadata__"):
        begin, end = entry["data_offsets"]
        assert begin == offset and begin % tensors[name].dtype.itemsize == 0, name
        want = tensors[name].astype(tensors[name].dtype.newbyteorder("<"))
        assert data[begin:end] == want.tobytes(), name
        assert entry["shape"] == list(tensors[name].shape)
        offset = end
    assert offset == len(data)
    assert header["__metadata__"] == {"note": "x", "fastnn.format_version": "1"}


def test_metadata_round_trip(tmp_path, rng):
    config = {"layers": [{"class": "Dense", "units": 17, "activation": "relu"}],
              "lr": 1e-3, "unicode": "ü→∑", "nested": {"a": [1, 2.5, None, True]}}
    state = {"epoch": 3, "best": float("inf")}
    path = tmp_path / "m.safetensors"
    write_tensors(path, {"w": _random(rng, "float32", (3,))},
                  {"fastnn.config": config, "fastnn.state": state, "plain": "{not json",
                   "empty": "", "ключ": "значение"})
    _, meta = read_tensors(path)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["plain"] == "{not json" and meta["empty"] == ""
    assert meta["ключ"] == "значение"
    assert json_metadata(meta, "fastnn.config") == config
    assert json_metadata(meta, "fastnn.state") == state
    assert json_metadata(meta, "absent", None) is None
    assert check_format_version(meta, path) == FORMAT_VERSION
    assert read_metadata(path) == meta


def test_json_metadata_errors():
    with pytest.raises(FileFormatError, match="has no 'fastnn.config'"):
        json_metadata({}, "fastnn.config", path="f.st")
    with pytest.raises(FileFormatError, match="f.st: .*not valid JSON"):
        json_metadata({"k": "{oops"}, "k", path="f.st")
    with pytest.raises(FileFormatError, match="repeats the key 'a'"):
        json_metadata({"k": '{"a": 1, "a": 2}'}, "k")


def test_same_input_same_bytes(tmp_path, rng):
    tensors = {"w": _random(rng, "float32", (4, 5)), "b": _random(rng, "float32", (5,))}
    meta = {"fastnn.config": {"b": 1, "a": 2}}
    write_tensors(tmp_path / "1", tensors, meta)
    write_tensors(tmp_path / "2", tensors, dict(reversed(list(meta.items()))))
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()


# --------------------------------------------------------------------------- writer input


@pytest.mark.parametrize("tensors, metadata, exc, fragment", [
    ({"c": np.zeros(3, np.complex64)}, {}, TypeError, "tensors['c'] has dtype complex64"),
    ({"o": np.array([None, 1], dtype=object)}, {}, TypeError, "tensors['o'] has dtype object"),
    ({"s": np.array(["ab"])}, {}, TypeError, "tensors['s']"),
    ({"l": [1.0, 2.0]}, {}, TypeError, "tensors['l'] must be a numpy array"),
    ({1: np.zeros(3)}, {}, TypeError, "tensor names must be str"),
    ({"__metadata__": np.zeros(3)}, {}, ValueError, "reserved"),
    ({"\ud800": np.zeros(3)}, {}, ValueError, "not valid Unicode"),
    ({}, {"k": object()}, TypeError, "metadata['k'] is not JSON-serialisable"),
    ({}, {3: "v"}, TypeError, "metadata keys must be str"),
    ({}, {"fastnn.format_version": "2"}, ValueError, "writes format version 1"),
    ([np.zeros(3)], {}, TypeError, "tensors must be a mapping"),
    ({}, None, TypeError, "metadata must be a mapping"),
])
def test_writer_rejects_bad_input_and_writes_nothing(tmp_path, tensors, metadata, exc, fragment):
    path = tmp_path / "m.safetensors"
    with pytest.raises(exc) as info:
        write_tensors(path, tensors, metadata)
    assert fragment in str(info.value)
    assert os.listdir(tmp_path) == []


def test_writer_accepts_matching_version_key(tmp_path):
    path = tmp_path / "m.safetensors"
    write_tensors(path, {}, {"fastnn.format_version": str(FORMAT_VERSION)})
    assert read_tensors(path) == ({}, {"fastnn.format_version": str(FORMAT_VERSION)})


# --------------------------------------------------------------------------- atomicity


def _old_file(tmp_path, rng):
    path = tmp_path / "model.safetensors"
    write_tensors(path, {"w": _random(rng, "float32", (64,))}, {"v": "old"})
    return path, path.read_bytes()


def _assert_untouched(tmp_path, path, old):
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name], "temporary file left behind"
    assert read_tensors(path)[1]["v"] == "old"


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_failed_commit_leaves_old_file(tmp_path, rng, monkeypatch, target):
    path, old = _old_file(tmp_path, rng)

    def boom(*args, **kwargs):
        raise OSError(5, "injected failure")

    monkeypatch.setattr(os, target, boom)
    with pytest.raises(OSError, match="injected failure"):
        write_tensors(path, {"w": _random(rng, "float32", (1000,))}, {"v": "new"})
    monkeypatch.undo()
    _assert_untouched(tmp_path, path, old)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_old_file(tmp_path, rng, monkeypatch, exc):
    path, old = _old_file(tmp_path, rng)
    real_fdopen = os.fdopen

    class FailsAfterOneWrite:
        def __init__(self, f):
            self._f, self._writes = f, 0

        def write(self, data):
            self._writes += 1
            if self._writes > 1:
                raise exc
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self._f.__exit__(*a)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FailsAfterOneWrite(real_fdopen(*a, **k)))
    with pytest.raises(type(exc)):
        write_tensors(path, {"w": _random(rng, "float32", (1000,)),
                             "b": _random(rng, "float32", (10,))}, {"v": "new"})
    monkeypatch.undo()
    _assert_untouched(tmp_path, path, old)


def test_overwrite_replaces_and_cleans_up(tmp_path, rng):
    path, _ = _old_file(tmp_path, rng)
    new = _random(rng, "float64", (5, 5))
    write_tensors(str(path), {"x": new}, {"v": "new"})
    got, meta = read_tensors(str(path))
    assert meta["v"] == "new" and list(got) == ["x"]
    np.testing.assert_array_equal(got["x"], new)
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_gets_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_tensors(tmp_path / "m", {}, {})
    finally:
        os.umask(mask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o644


_SAVER = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("fastnn_io_under_test", sys.argv[1])
    io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io)
    target, start = sys.argv[2], int(sys.argv[3])
    i = start
    while True:
        # Every element and the metadata carry i: a torn file cannot look consistent.
        io.write_tensors(target, {"w": np.full(300_000, i, np.float32),
                                  "b": np.full(7, i, np.int64)}, {"i": str(i)})
        if i == start:
            print("saved", flush=True)
        i += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_leaves_a_whole_file(tmp_path):
    import fastnn.io
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    target = tmp_path / "model.safetensors"
    rng = np.random.default_rng(7)
    last = -1
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(script), fastnn.io.__file__, str(target), str(1000 * round_)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = proc.stdout.readline()
            assert line == b"saved\n", proc.stderr.read().decode()
            time.sleep(float(rng.uniform(0.0, 0.08)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        got, meta = read_tensors(target)
        i = int(meta["i"])
        assert 1000 * round_ <= i and i > last
        assert got["w"].shape == (300_000,) and np.all(got["w"] == i)
        assert np.all(got["b"] == i)
        last = i
    # A killed saver may leave its temporary file, never a damaged target.
    for name in os.listdir(tmp_path):
        assert name in ("saver.py", target.name) or name.endswith(".tmp"), name


# --------------------------------------------------------------------------- corruption


@pytest.fixture
def small_file(tmp_path, rng):
    path = tmp_path / "good.safetensors"
    write_tensors(path, {"w": _random(rng, "float32", (2, 3)), "i": _random(rng, "int8", (3,)),
                         "z": np.zeros((0,), np.float64)}, {"k": "v"})
    return path


def test_truncated_at_every_byte(small_file, tmp_path):
    full = small_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for k in range(len(full)):
        cut.write_bytes(full[:k])
        with pytest.raises(FileFormatError) as info:
            read_tensors(cut)
        assert str(cut) in str(info.value), k
    cut.write_bytes(full)
    read_tensors(cut)


def test_short_and_empty_files(tmp_path):
    for k in range(8):
        p = tmp_path / f"f{k}"
        p.write_bytes(b"\x00" * k)
        _assert_rejected(p, "too short")


def test_trailing_garbage(small_file):
    small_file.write_bytes(small_file.read_bytes() + b"\x00junk")
    _assert_rejected(small_file, "5 unexpected bytes after the last tensor")


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 2**40, 100 * 2**20 + 1])
def test_header_length_lying_huge(tmp_path, length):
    path = _raw_file(tmp_path / "f", {}, length=length)
    _assert_rejected(path, f"header length {length}", "exceeds")


def test_header_length_past_end_of_file(tmp_path):
    header = json.dumps({"a": _entry("F32", [1], 0, 4)}).encode()
    path = _raw_file(tmp_path / "f", None, b"\x00" * 4, header_bytes=header, pad=False,
                     length=len(header) + 5)
    _assert_rejected(path, f"header length {len(header) + 5} exceeds the {len(header) + 4} bytes")


def test_header_length_too_short_cuts_json(tmp_path):
    header = json.dumps({"a": _entry("F32", [1], 0, 4)}).encode()
    path = _raw_file(tmp_path / "f", None, b"\x00" * 4, header_bytes=header, pad=False,
                     length=len(header) - 3)
    _assert_rejected(path, "not valid JSON")


def test_max_header_bytes_is_enforced(small_file):
    (n,) = struct.unpack("<Q", small_file.read_bytes()[:8])
    read_tensors(small_file, max_header_bytes=n)
    _assert_rejected(small_file, "raise max_header_bytes", max_header_bytes=n - 1)
    with pytest.raises(ValueError, match="max_header_bytes"):
        read_tensors(small_file, max_header_bytes=-1)
    with pytest.raises(ValueError, match="max_header_bytes"):
        read_tensors(small_file, max_header_bytes=1.5)


@pytest.mark.parametrize("header_bytes, fragment", [
    (b'{"a": ', "not valid JSON"),
    (b"{'a': 1}", "not valid JSON"),
    (b"[1, 2]", "does not start with '{'"),
    (b'{"a": 1} {"b": 2}', "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"\xc3": 1}', "not valid UTF-8"),
    (b'{"__metadata__": {"x": NaN}}', "NaN"),
    (b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', "Infinity"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
    (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"   {}", "does not start with '{'"),
    (b"", "does not start with '{'"),
])
def test_bad_json(tmp_path, header_bytes, fragment):
    _assert_rejected(_raw_file(tmp_path / "f", None, header_bytes=header_bytes), fragment)


@pytest.mark.parametrize("header_bytes, fragment", [
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
     b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "repeats the key 'a'"),
    (b'{"a": {"dtype": "F32", "dtype": "F64", "shape": [1], "data_offsets": [0, 4]}}',
     "repeats the key 'dtype'"),
    (b'{"__metadata__": {"k": "1", "k": "2"}}', "repeats the key 'k'"),
    (b'{"__metadata__": {}, "__metadata__": {}}', "repeats the key '__metadata__'"),
])
def test_duplicate_keys(tmp_path, header_bytes, fragment):
    _assert_rejected(_raw_file(tmp_path / "f", None, b"\x00" * 8, header_bytes=header_bytes),
                     fragment)


@pytest.mark.parametrize("entry, fragment", [
    (_entry("BF16", [2], 0, 4), "dtype 'BF16' is not supported"),
    (_entry("F128", [1], 0, 4), "dtype 'F128' is not supported"),
    (_entry("f32", [1], 0, 4), "dtype 'f32' is not supported"),
    (_entry(4, [1], 0, 4), "dtype must be a string"),
    (_entry(None, [1], 0, 4), "dtype must be a string"),
    ({"dtype": "F32", "shape": [1]}, "missing ['data_offsets']"),
    ({**_entry("F32", [1], 0, 4), "extra": 1}, "unexpected ['extra']"),
    ([1, 2], "entry must be an object"),
    (_entry("F32", [-1], 0, 4), "shape must be a list of non-negative integers"),
    (_entry("F32", [True], 0, 4), "shape must be a list of non-negative integers"),
    (_entry("F32", [1.0], 0, 4), "shape must be a list of non-negative integers"),
    (_entry("F32", "1", 0, 4), "shape must be a list of non-negative integers"),
    (_entry("F32", {"0": 1}, 0, 4), "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets must be [begin, end]"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]},
     "data_offsets must be [begin, end]"),
    (_entry("F32", [1], -4, 0), "data_offsets must be [begin, end]"),
    (_entry("F32", [1], 0, 4.0), "data_offsets must be [begin, end]"),
    (_entry("F32", [1], False, 4), "data_offsets must be [begin, end]"),
    (_entry("F32", [1], 8, 4), "end before they begin"),
    (_entry("F32", [3], 0, 8), "needs 12 bytes but data_offsets [0, 8] span 8"),
    (_entry("F64", [1], 0, 4), "needs 8 bytes"),
    (_entry("F32", [2**40, 2**40], 0, 8), f"needs {2**82} bytes"),
    (_entry("F32", [2**62, 4], 0, 2**64), "needs"),
    (_entry("U8", [2**40], 0, 2**40), "run past the end"),
    (_entry("U8", [2**64 + 8], 0, 2**64 + 8), "too large for NumPy"),
    (_entry("F32", [0, 2**62, 2**62], 0, 0), "too large for NumPy"),
    (_entry("F32", [1] * 65, 0, 4), "too large for NumPy"),
])
def test_bad_entries(tmp_path, entry, fragment):
    path = _raw_file(tmp_path / "f", {"t": entry}, b"\x00" * 8)
    msg = _assert_rejected(path, fragment)
    assert "'t'" in msg or "repeats" in msg


def test_offsets_out_of_range(tmp_path):
    path = _raw_file(tmp_path / "f", {"a": _entry("F32", [2], 0, 8)}, b"\x00" * 4)
    _assert_rejected(path, "run past the end of the data section (4 bytes")


def test_overlapping_tensors(tmp_path):
    path = _raw_file(tmp_path / "f", {"a": _entry("F32", [2], 0, 8),
                                      "b": _entry("F32", [1], 4, 8)}, b"\x00" * 8)
    _assert_rejected(path, "overlap")
    path = _raw_file(tmp_path / "g", {"a": _entry("F32", [2], 0, 8),
                                      "b": _entry("F32", [2], 0, 8)}, b"\x00" * 8)
    _assert_rejected(path, "overlap")
    # An empty tensor placed inside another one's bytes is an overlap too.
    path = _raw_file(tmp_path / "h", {"a": _entry("F32", [2], 0, 8),
                                      "e": _entry("F32", [0], 4, 4)}, b"\x00" * 8)
    _assert_rejected(path, "overlap")


def test_gap_between_tensors(tmp_path):
    path = _raw_file(tmp_path / "f", {"a": _entry("F32", [1], 0, 4),
                                      "b": _entry("F32", [1], 8, 12)}, b"\x00" * 12)
    _assert_rejected(path, "gap of 4 unused bytes before it")
    path = _raw_file(tmp_path / "g", {"b": _entry("F32", [1], 4, 8)}, b"\x00" * 8)
    _assert_rejected(path, "gap of 4")


def test_valid_hand_built_file_in_any_header_order(tmp_path):
    data = np.arange(3, dtype="<f4").tobytes() + np.arange(2, dtype="<i2").tobytes()
    header = {"b": _entry("I16", [2], 12, 16), "__metadata__": {"k": "v"},
              "e": _entry("F64", [0, 5], 12, 12), "a": _entry("F32", [3], 0, 12)}
    got, meta = read_tensors(_raw_file(tmp_path / "f", header, data, pad=False))
    assert list(got) == ["b", "e", "a"] and meta == {"k": "v"}
    np.testing.assert_array_equal(got["a"], [0, 1, 2])
    np.testing.assert_array_equal(got["b"], [0, 1])
    assert got["e"].shape == (0, 5)


@pytest.mark.parametrize("meta, fragment", [
    ({"k": 1}, "metadata value for 'k' must be a string"),
    ({"k": None}, "metadata value for 'k' must be a string"),
    ({"k": {"x": "y"}}, "must be a string"),
    ([["k", "v"]], "must be an object of strings"),
    ("k=v", "must be an object of strings"),
])
def test_bad_metadata(tmp_path, meta, fragment):
    _assert_rejected(_raw_file(tmp_path / "f", {"__metadata__": meta}), fragment)


def test_null_metadata_means_none(tmp_path):
    assert read_tensors(_raw_file(tmp_path / "f", {"__metadata__": None})) == ({}, {})


def test_not_a_regular_file(tmp_path):
    _assert_rejected(tmp_path, "not a regular file")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_tensors(tmp_path / "absent")


def test_hostile_files_cost_no_more_memory_than_their_size(tmp_path):
    hostile = [
        _raw_file(tmp_path / "a", {}, length=2**63),
        _raw_file(tmp_path / "b", {"t": _entry("F64", [2**31, 2**31], 0, 2**65)}),
        _raw_file(tmp_path / "c", {"t": _entry("U8", [2**34], 0, 2**34)}, b"\x00" * 64),
        _raw_file(tmp_path / "d", {f"t{i}": _entry("F32", [2**28], 0, 2**30) for i in range(64)}),
    ]
    tracemalloc.start()
    try:
        for path in hostile:
            tracemalloc.reset_peak()
            with pytest.raises(FileFormatError):
                read_tensors(path)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 1_000_000, (path, peak)
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("value, fragment", [
    (None, "no 'fastnn.format_version'"),
    ("", "expected a positive integer"),
    ("abc", "expected a positive integer"),
    ("1.0", "expected a positive integer"),
    (" 1", "expected a positive integer"),
    ("+1", "expected a positive integer"),
    ("-1", "expected a positive integer"),
    ("0", "expected a positive integer"),
    ("١", "expected a positive integer"),  # a non-ASCII digit
    ("9" * 5000, "expected a positive integer"),
    (str(FORMAT_VERSION + 1), "written by a newer fastnn"),
    ("999999", "Upgrade fastnn"),
])
def test_check_format_version_rejects(value, fragment):
    meta = {} if value is None else {"fastnn.format_version": value}
    with pytest.raises(FileFormatError, match="model.st: ") as info:
        check_format_version(meta, "model.st")
    assert fragment in str(info.value)


def test_newer_file_end_to_end(tmp_path):
    path = _raw_file(tmp_path / "f", {"__metadata__": {"fastnn.format_version": "2"}})
    _, meta = read_tensors(path)
    with pytest.raises(FileFormatError, match="newer fastnn .*version 2.* up to version 1"):
        check_format_version(meta, path)


def test_check_format_version_accepts_current():
    assert check_format_version({"fastnn.format_version": str(FORMAT_VERSION)}) == FORMAT_VERSION
    if FORMAT_VERSION > 1:
        assert check_format_version({"fastnn.format_version": "1"}) == 1


# --------------------------------------------------------------------------- interop


def test_files_interoperate_with_safetensors(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    tensors = {f"{dtype}_{i}": _random(rng, dtype, shape) for dtype in ALL_DTYPES
               for i, shape in enumerate([(), (0,), (3, 17), (2, 0, 3)])}
    meta = {"fastnn.config": json.dumps({"a": 1}), "k": "v"}

    ours = tmp_path / "ours.safetensors"
    write_tensors(ours, tensors, meta)
    theirs_view = st.load_file(str(ours))
    with safe_open(str(ours), framework="np") as f:
        assert f.metadata() == {**meta, "fastnn.format_version": str(FORMAT_VERSION)}
    assert set(theirs_view) == set(tensors)
    for name, want in tensors.items():
        assert theirs_view[name].dtype == want.dtype and theirs_view[name].shape == want.shape
        np.testing.assert_array_equal(theirs_view[name], want)

    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(theirs), metadata=meta)
    got, got_meta = read_tensors(theirs)
    assert got_meta == meta
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)
