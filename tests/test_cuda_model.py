"""The same training script on 'cpu' and on 'cuda' (Numba's simulator in CI):
only the device flag changes, and the results agree to float32 tolerance."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

import fastnn  # noqa: E402
from fastnn import Sequential  # noqa: E402
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D  # noqa: E402
from fastnn.utils import set_random_seed  # noqa: E402


def _mlp(device):
    return Sequential([Flatten(input_shape=(3, 4)), Dense(8, activation="relu"), Dropout(0.25),
                       Dense(3, activation="softmax")], device=device)


def _cnn(device):
    return Sequential([Conv2D(2, 3, padding="same", activation="relu", input_shape=(6, 6, 1)),
                       MaxPooling2D(2), Flatten(), Dense(3, activation="softmax")],
                      device=device)


def _train(build, device, x, y, epochs=2):
    set_random_seed(5)
    model = build(device)
    model.compile(fastnn.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=8, verbose=0)
    return model, history.history


@pytest.mark.parametrize("build,shape", [(_mlp, (3, 4)), (_cnn, (6, 6, 1))])
def test_cpu_and_cuda_train_to_the_same_weights(build, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16,) + shape).astype(np.float32)
    y = rng.integers(0, 3, 16)
    cpu, cpu_hist = _train(build, "cpu", x, y)
    gpu, gpu_hist = _train(build, "cuda", x, y)
    assert gpu.device == "cuda" and cpu.device == "cpu"
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cpu_hist["loss"], gpu_hist["loss"], rtol=1e-4)
    assert cpu_hist["accuracy"] == gpu_hist["accuracy"]
    np.testing.assert_allclose(cpu.predict(x, verbose=0), gpu.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)


def test_to_moves_weights_and_optimizer_state_both_ways():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    reference, _ = _train(_mlp, "cpu", x, y, epochs=2)
    moved, _ = _train(_mlp, "cpu", x, y, epochs=1)
    moved.to("cuda")
    assert moved.device == "cuda" and moved.optimizer.backend.name == "cuda"
    moved.fit(x, y, epochs=1, batch_size=8, verbose=0)
    moved.to("cpu")
    assert moved.device == "cpu"
    for a, b in zip(reference.get_weights(), moved.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fastnn_device_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("FASTNN_DEVICE", "cuda")
    assert Sequential([Dense(2, input_shape=(3,))]).device == "cuda"
    monkeypatch.setenv("FASTNN_DEVICE", "tpu")
    with pytest.raises(ValueError, match="FASTNN_DEVICE"):
        Sequential([Dense(2, input_shape=(3,))])


def test_gpu_check_runs_tiny_under_the_simulator(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "gpu_check.py")
    if not os.path.exists(script):
        pytest.skip("bench/gpu_check.py is not in this checkout")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)))
    result = subprocess.run([sys.executable, script, "--tiny", "--json",
                             str(tmp_path / "out.json")], capture_output=True, text=True,
                            timeout=600, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out.json").exists()
