"""fastnn.datasets (MNIST IDX reader, embedded digits) and the MNIST example.

The real MNIST files are read from ../shared/datasets/mnist next to the
repository (skipped when absent); every error path is exercised on small
synthetic IDX files written to tmp_path.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastnn.datasets import digits, mnist

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MNIST_DIR = SHARED / "mnist"
DIGITS_CSV = SHARED / "digits" / "digits.csv.gz"

# md5 of the decompressed files, from shared/datasets/README.md.
MNIST_MD5 = {
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}
# Per-digit counts of the standard MNIST splits (widely published).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path_factory, monkeypatch):
    # No test may find real data by accident in the user's home or FASTNN_DATA.
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


# ---------------------------------------------------------------------------
# synthetic IDX files
# ---------------------------------------------------------------------------

def idx_bytes(data: np.ndarray, magic: int = None, dims=None) -> bytes:
    """Serialise ``data`` as IDX (unsigned bytes); magic/dims may be forged."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | data.ndim
    if dims is None:
        dims = data.shape
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data.tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_set(directory: Path, rng, n_train=7, n_test=5, shape=(4, 3), gz=False,
             skip=()):
    """Write a complete, valid small MNIST-like set; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train,) + shape, dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test,) + shape, dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for i, (key, arr) in enumerate(arrays.items()):
        if key in skip:
            continue
        use_gz = gz if isinstance(gz, bool) else gz[i]
        write(directory / mnist.FILES[key], idx_bytes(arr), use_gz)
    return arrays


# ---------------------------------------------------------------------------
# real MNIST
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_mnist():
    if not all((MNIST_DIR / (name + ".gz")).is_file() for name in mnist.FILES.values()):
        pytest.skip(f"MNIST files not found in {MNIST_DIR}")
    return mnist.load_data(MNIST_DIR)


def test_real_mnist_shapes_and_dtypes(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == np.uint8
    assert y_test.shape == (10000,) and y_test.dtype == np.uint8
    # Like keras.datasets, the arrays belong to the caller and may be modified.
    assert x_train.flags.writeable and y_test.flags.writeable
    assert x_train.flags.c_contiguous


def test_real_mnist_known_facts(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert y_train[0] == 5
    assert list(y_train[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(y_test[:5]) == [7, 2, 1, 0, 4]
    assert np.bincount(y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == TEST_COUNTS
    assert sum(TRAIN_COUNTS) == 60000 and sum(TEST_COUNTS) == 10000
    assert x_train.min() == 0 and x_train.max() == 255
    # The classic normalisation constants: mean 0.1307, std 0.3081 of x / 255.
    scaled = x_train.astype(np.float64) / 255.0
    assert abs(scaled.mean() - 0.1307) < 5e-5 and abs(scaled.std() - 0.3081) < 5e-5


def test_real_mnist_bytes_match_published_md5(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    # Rebuilding each file from what the reader returned and hashing it checks
    # header parsing and data placement byte for byte.
    rebuilt = {
        "train_images": struct.pack(">IIII", 2051, 60000, 28, 28) + x_train.tobytes(),
        "train_labels": struct.pack(">II", 2049, 60000) + y_train.tobytes(),
        "test_images": struct.pack(">IIII", 2051, 10000, 28, 28) + x_test.tobytes(),
        "test_labels": struct.pack(">II", 2049, 10000) + y_test.tobytes(),
    }
    for key, payload in rebuilt.items():
        assert hashlib.md5(payload).hexdigest() == MNIST_MD5[key], key


def test_real_mnist_found_through_fastnn_data(real_mnist, tmp_path, monkeypatch):
    (tmp_path / "mnist").symlink_to(MNIST_DIR, target_is_directory=True)
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path))
    assert mnist.find_data_dir() == tmp_path / "mnist"
    (_, y_train), (_, y_test) = mnist.load_data()
    np.testing.assert_array_equal(y_train, real_mnist[0][1])
    np.testing.assert_array_equal(y_test, real_mnist[1][1])


# ---------------------------------------------------------------------------
# synthetic: well-formed files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True, (True, False, False, True)])
def test_roundtrip_plain_gz_and_mixed(tmp_path, rng, gz):
    arrays = make_set(tmp_path, rng, gz=gz)
    (x_train, y_train), (x_test, y_test) = mnist.load_data(tmp_path)
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(x_test, arrays["test_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.dtype == np.uint8 and x_train.shape == (7, 4, 3)
    assert y_test.dtype == np.uint8 and y_test.shape == (5,)


def test_compression_detected_from_content(tmp_path, rng):
    labels = rng.integers(0, 10, size=11, dtype=np.uint8)
    misnamed = tmp_path / "labels.gz"          # plain bytes behind a .gz name
    misnamed.write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(mnist.read_labels(misnamed), labels)
    hidden = tmp_path / "labels"               # gzip bytes without the suffix
    hidden.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(mnist.read_labels(hidden), labels)


def test_search_order(tmp_path, rng, monkeypatch):
    home = Path(os.environ["HOME"])
    assert mnist.find_data_dir() is None
    make_set(home / ".fastnn" / "datasets" / "mnist", rng, n_train=3)
    assert mnist.find_data_dir() == home / ".fastnn" / "datasets" / "mnist"
    assert mnist.load_data()[0][0].shape[0] == 3

    env_root = tmp_path / "env"
    make_set(env_root / "mnist", rng, n_train=4)
    monkeypatch.setenv("FASTNN_DATA", str(env_root))
    assert mnist.find_data_dir() == env_root / "mnist"
    assert mnist.load_data()[0][0].shape[0] == 4

    explicit = tmp_path / "explicit"
    make_set(explicit, rng, n_train=6)
    assert mnist.load_data(explicit)[0][0].shape[0] == 6
    assert mnist.load_data(str(explicit))[0][0].shape[0] == 6
    # An explicit path is the only place searched: no fallback to the others.
    with pytest.raises(FileNotFoundError):
        mnist.load_data(tmp_path / "nowhere")
    assert mnist.find_data_dir(tmp_path / "nowhere") is None


# ---------------------------------------------------------------------------
# synthetic: missing files
# ---------------------------------------------------------------------------

def test_missing_files_are_named(tmp_path, rng):
    make_set(tmp_path, rng, skip=("train_labels", "test_images"))
    assert mnist.find_data_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError) as info:
        mnist.load_data(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    missing_part = msg.split("missing:")[1].split(")")[0]
    assert "train-labels-idx1-ubyte" in missing_part
    assert "t10k-images-idx3-ubyte" in missing_part
    assert "train-images-idx3-ubyte" not in missing_part
    assert "t10k-labels-idx1-ubyte" not in missing_part


def test_missing_default_locations_explain_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        mnist.load_data()
    msg = str(info.value)
    assert str(tmp_path / "mnist") in msg
    assert str(Path(os.environ["HOME"]) / ".fastnn" / "datasets" / "mnist") in msg
    assert "FASTNN_DATA" in msg and "path=" in msg
    assert "does not exist" in msg


def test_missing_single_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mnist.read_images(tmp_path / "absent")


# ---------------------------------------------------------------------------
# synthetic: corrupt files
# ---------------------------------------------------------------------------

def images_file(tmp_path, payload: bytes, gz: bool) -> Path:
    return write(tmp_path / "train-images-idx3-ubyte", payload, gz)


def labels_file(tmp_path, payload: bytes, gz: bool) -> Path:
    return write(tmp_path / "train-labels-idx1-ubyte", payload, gz)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("magic, expect", [
    (2049, "magic number"),                    # a labels header on an images file
    (0x12345678, "not an IDX file"),           # garbage
    (0x03080000, "little-endian"),             # 2051 written in the wrong byte order
    (0x00000D03, "element type 0x0D"),         # float32 IDX
    (0x00000804, "4 dimension"),
])
def test_bad_image_magic(tmp_path, rng, gz, magic, expect):
    data = rng.integers(0, 256, size=(2, 4, 4), dtype=np.uint8)
    path = images_file(tmp_path, idx_bytes(data, magic=magic), gz)
    with pytest.raises(ValueError) as info:
        mnist.read_images(path)
    assert str(path) in str(info.value) and expect in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_images_file_given_as_labels(tmp_path, rng, gz):
    data = rng.integers(0, 10, size=(2, 4, 4), dtype=np.uint8)
    path = labels_file(tmp_path, idx_bytes(data), gz)
    with pytest.raises(ValueError, match="images file"):
        mnist.read_labels(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x02"])
def test_truncated_header(tmp_path, gz, payload):
    path = images_file(tmp_path, payload, gz)
    with pytest.raises(ValueError) as info:
        mnist.read_images(path)
    assert str(path) in str(info.value)
    assert "too short" in str(info.value) or "truncated" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [1, 17, 47])
def test_truncated_data(tmp_path, rng, gz, cut):
    data = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    path = images_file(tmp_path, idx_bytes(data)[:-cut], gz)
    with pytest.raises(ValueError) as info:
        mnist.read_images(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert f"only {48 - cut}" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("extra", [1, 3, 100])
def test_overlong_data(tmp_path, rng, gz, extra):
    labels = rng.integers(0, 10, size=9, dtype=np.uint8)
    path = labels_file(tmp_path, idx_bytes(labels) + bytes(extra), gz)
    with pytest.raises(ValueError) as info:
        mnist.read_labels(path)
    assert str(path) in str(info.value) and "longer than its header" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [
    (0xFFFFFFFF, 0xFFFF, 0xFFFF),   # ~1.8e19 bytes: beyond any allocator
    (250000, 28, 28),               # 196 MB: allocatable, so a naive reader would
])
def test_header_claiming_huge_count_fails_without_allocating(tmp_path, rng, gz, dims):
    data = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    # The header claims far more than the 1568 data bytes present.
    payload = idx_bytes(data, dims=dims)
    path = images_file(tmp_path, payload, gz)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="truncated"):
            mnist.read_images(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak traced allocation {peak} bytes"


@pytest.mark.parametrize("gz", [False, True])
def test_zero_count_rejected(tmp_path, gz):
    path = labels_file(tmp_path, struct.pack(">II", 2049, 0), gz)
    with pytest.raises(ValueError, match="0 labels"):
        mnist.read_labels(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("bad", [10, 11, 255])
def test_label_out_of_range(tmp_path, rng, gz, bad):
    labels = rng.integers(0, 10, size=20, dtype=np.uint8)
    labels[13] = bad
    path = labels_file(tmp_path, idx_bytes(labels), gz)
    with pytest.raises(ValueError) as info:
        mnist.read_labels(path)
    msg = str(info.value)
    assert str(path) in msg and f"label {bad} at index 13" in msg


def test_corrupt_gzip_stream(tmp_path, rng):
    labels = rng.integers(0, 10, size=500, dtype=np.uint8)
    blob = bytearray(gzip.compress(idx_bytes(labels)))
    blob[20:40] = b"\xff" * 20
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError) as info:
        mnist.read_labels(path)
    assert str(path) in str(info.value)

    cut = tmp_path / "cut-labels.gz"     # gzip stream that stops mid-way
    cut.write_bytes(gzip.compress(idx_bytes(labels))[:-30])
    with pytest.raises(ValueError) as info:
        mnist.read_labels(cut)
    assert str(cut) in str(info.value)


@pytest.mark.parametrize("split", ["train", "test"])
def test_count_mismatch_between_images_and_labels(tmp_path, rng, split):
    make_set(tmp_path, rng)
    key = split + "_labels"
    write(tmp_path / mnist.FILES[key], idx_bytes(rng.integers(0, 10, 6, dtype=np.uint8)
                                                 if split == "train" else
                                                 rng.integers(0, 10, 4, dtype=np.uint8)),
          gz=False)
    with pytest.raises(ValueError) as info:
        mnist.load_data(tmp_path)
    msg = str(info.value)
    assert mnist.FILES[key] in msg and mnist.FILES[split + "_images"] in msg
    assert "labels" in msg and "images" in msg


def test_train_test_image_size_mismatch(tmp_path, rng):
    make_set(tmp_path, rng, shape=(4, 3))
    write(tmp_path / mnist.FILES["test_images"],
          idx_bytes(rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)), gz=False)
    with pytest.raises(ValueError, match="test images are 3 x 4"):
        mnist.load_data(tmp_path)


def test_corrupt_file_in_a_set_is_named(tmp_path, rng):
    make_set(tmp_path, rng, gz=True)
    bad = tmp_path / (mnist.FILES["test_labels"] + ".gz")
    bad.write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 3, 4, 12], dtype=np.uint8))))
    with pytest.raises(ValueError, match=str(bad).replace(".", r"\.")):
        mnist.load_data(tmp_path)


# ---------------------------------------------------------------------------
# embedded digits
# ---------------------------------------------------------------------------

def reference_digits():
    """The digits table parsed independently of fastnn, from the shared copy."""
    if not DIGITS_CSV.is_file():
        pytest.skip(f"{DIGITS_CSV} not found")
    with gzip.open(DIGITS_CSV, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64], table[:, 64]


def test_packaged_csv_is_the_shared_copy():
    if not DIGITS_CSV.is_file():
        pytest.skip(f"{DIGITS_CSV} not found")
    from importlib import resources
    packaged = resources.files("fastnn.datasets").joinpath("digits.csv.gz").read_bytes()
    assert gzip.decompress(packaged) == gzip.decompress(DIGITS_CSV.read_bytes())


def test_digits_shapes_dtypes_range():
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    assert x_train.ndim == 3 and x_train.shape[1:] == (8, 8)
    assert x_test.shape[1:] == (8, 8)
    assert x_train.shape[0] + x_test.shape[0] == 1797
    assert y_train.shape == (x_train.shape[0],) and y_test.shape == (x_test.shape[0],)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.uint8 and y_test.dtype == np.uint8
    both = np.concatenate([x_train.ravel(), x_test.ravel()])
    assert both.min() == 0.0 and both.max() == 1.0
    # Exactly count / 16: every value times 16 is an integer 0..16.
    np.testing.assert_array_equal(both * 16, np.round(both * 16))
    assert abs(x_test.shape[0] - 0.2 * 1797) <= 10


def test_digits_content_matches_independent_parse():
    ref_x, ref_y = reference_digits()
    (x_train, y_train), (x_test, y_test) = digits.load_data(test_fraction=0.3, seed=5)
    got = np.concatenate([
        np.concatenate([x_train.reshape(-1, 64), x_test.reshape(-1, 64)]) * 16,
        np.concatenate([y_train, y_test])[:, None],
    ], axis=1).astype(np.int64)
    want = np.concatenate([ref_x, ref_y[:, None]], axis=1)
    # Same rows as a multiset: nothing lost, duplicated or altered by the split.
    got = got[np.lexsort(got.T[::-1])]
    want = want[np.lexsort(want.T[::-1])]
    np.testing.assert_array_equal(got, want)


def test_digits_split_is_deterministic_and_seeded():
    a = digits.load_data(seed=3)
    b = digits.load_data(seed=3)
    c = digits.load_data(seed=4)
    for part in range(2):
        for arr in range(2):
            np.testing.assert_array_equal(a[part][arr], b[part][arr])
    assert not np.array_equal(a[1][1], c[1][1])


def test_digits_split_is_stratified():
    ref_x, ref_y = reference_digits()
    class_sizes = np.bincount(ref_y, minlength=10)
    for fraction in (0.1, 0.2, 0.5):
        (_, y_train), (_, y_test) = digits.load_data(test_fraction=fraction)
        test_sizes = np.bincount(y_test, minlength=10)
        train_sizes = np.bincount(y_train, minlength=10)
        assert (test_sizes > 0).all() and (train_sizes > 0).all()
        np.testing.assert_array_equal(test_sizes + train_sizes, class_sizes)
        np.testing.assert_array_equal(test_sizes, np.round(class_sizes * fraction))
    # Classes are shuffled together, not laid out in blocks.
    assert len(np.unique(y_train[:30])) >= 5


def test_digits_results_are_independent_copies():
    (x_train, y_train), _ = digits.load_data()
    keep_x, keep_y = x_train.copy(), y_train.copy()
    x_train[:] = -1.0
    y_train[:] = 99
    (x_again, y_again), _ = digits.load_data()
    np.testing.assert_array_equal(x_again, keep_x)
    np.testing.assert_array_equal(y_again, keep_y)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        digits.load_data(test_fraction=fraction)


def _csv(rows) -> bytes:
    return "".join(",".join(str(v) for v in r) + "\n" for r in rows).encode()


def _good_rows(rng, n=12):
    rows = np.concatenate([rng.integers(0, 17, size=(n, 64)),
                           rng.integers(0, 10, size=(n, 1))], axis=1)
    return rows.tolist()


@pytest.mark.parametrize("as_path", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_digits_parse_accepts_bytes_and_paths(tmp_path, rng, as_path, gz):
    rows = _good_rows(rng)
    blob = _csv(rows)
    if gz:
        blob = gzip.compress(blob)
    source = blob
    if as_path:
        source = tmp_path / "d.csv"
        source.write_bytes(blob)
    pixels, labels = digits._parse_csv(source)
    table = np.array(rows)
    np.testing.assert_array_equal(pixels, table[:, :64])
    np.testing.assert_array_equal(labels, table[:, 64])
    assert pixels.dtype == np.uint8 and labels.dtype == np.uint8


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r[4].pop(), "line 5 has 64 columns"),
    (lambda r: r[2].append(0), "line 3 has 66 columns"),
    (lambda r: r[7].__setitem__(10, "x"), "line 8 holds a non-integer field 'x'"),
    (lambda r: r[7].__setitem__(10, ""), "line 8 holds a non-integer"),
    (lambda r: r[1].__setitem__(3, 17), "line 2: pixel value 17 is out of range 0..16"),
    (lambda r: r[9].__setitem__(0, -1), "line 10: pixel value -1"),
    (lambda r: r[6].__setitem__(64, 10), "line 7: label 10 is out of range 0..9"),
    (lambda r: r[11].__setitem__(64, -2), "line 12: label -2"),
])
def test_digits_parse_rejects_corrupt_rows(rng, mutate, expect):
    rows = _good_rows(rng)
    mutate(rows)
    with pytest.raises(ValueError, match=expect):
        digits._parse_csv(_csv(rows))


def test_digits_parse_rejects_empty_and_garbage(tmp_path):
    with pytest.raises(ValueError, match="no data rows"):
        digits._parse_csv(b"\n\n")
    with pytest.raises(ValueError, match="gzip"):
        digits._parse_csv(b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(ValueError, match="ASCII"):
        digits._parse_csv("é,".encode("utf-8") * 65)
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"1,2,3\n")
    with pytest.raises(ValueError, match=str(bad).replace(".", r"\.")):
        digits._parse_csv(bad)


# ---------------------------------------------------------------------------
# the example (its data handling always; training only with the model API)
# ---------------------------------------------------------------------------

def test_example_falls_back_to_digits(monkeypatch, tmp_path):
    from fastnn.examples import mnist_mlp
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path))
    kind, desc, ((x_train, y_train), (x_test, y_test)) = mnist_mlp.load_dataset(None)
    assert kind == "digits" and "digits" in desc
    assert x_train.shape[1:] == (8, 8) and x_train.dtype == np.float32


def test_example_uses_mnist_when_found(real_mnist):
    from fastnn.examples import mnist_mlp
    kind, desc, ((x_train, y_train), (x_test, y_test)) = mnist_mlp.load_dataset(str(MNIST_DIR))
    assert kind == "mnist" and str(MNIST_DIR) in desc
    assert x_train.dtype == np.float32 and x_train.shape == (60000, 28, 28)
    assert 0.0 <= x_train.min() and x_train.max() == 1.0
    np.testing.assert_array_equal(x_test, real_mnist[1][0].astype(np.float32) / np.float32(255))


def test_example_explicit_data_dir_missing(tmp_path, capsys):
    from fastnn.examples import mnist_mlp
    assert mnist_mlp.main(["--data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "train-images-idx3-ubyte" in err


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--batch-size", "0"],
                                  ["--device", "tpu"], ["--seed", "-1"]])
def test_example_rejects_bad_arguments(argv):
    from fastnn.examples import mnist_mlp
    with pytest.raises(SystemExit) as info:
        mnist_mlp.main(argv)
    assert info.value.code == 2


def test_example_trains_on_digits(monkeypatch, tmp_path, capsys):
    try:
        from fastnn import Sequential  # noqa: F401
        from fastnn.layers import Dense, Flatten  # noqa: F401
        from fastnn.utils import set_random_seed, to_categorical  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"model API not available: {exc}")
    from fastnn.examples import mnist_mlp
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path))
    save = tmp_path / "model.fnn"
    assert mnist_mlp.main(["--epochs", "8", "--save", str(save), "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "embedded 8x8 digits" in out
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.7, out        # chance is 0.1; a correct MLP reaches ~0.89
    assert save.exists() or any(tmp_path.glob("model.fnn*"))
