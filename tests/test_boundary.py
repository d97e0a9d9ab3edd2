"""Bad calls into fastnn._C raise TypeError/ValueError naming the argument.

Every wrapper is described once (valid arguments, which are outputs, which
accept any ndim); each class of defect is then applied to each array argument
in turn: not an ndarray, wrong dtype, byte-swapped, wrong ndim, mismatched
shape, non-contiguous, read-only output, output overlapping an input. The
valid call is run first so that the defect is the only thing wrong.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, NamedTuple, Set

import numpy as np
import pytest

from fastnn import _C
from fastnn.backend import get_backend

R, C = 5, 4


class Spec(NamedTuple):
    fn: Callable
    make: Callable[[np.random.Generator], Dict[str, object]]
    outputs: Set[str]
    any_ndim: Set[str] = set()
    shape_free: Set[str] = set()   # arguments no other argument's shape depends on


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _pos(rng, *shape):
    return rng.uniform(0.1, 1.0, shape).astype(np.float32)


def _labels(rng):
    return rng.integers(0, C, R).astype(np.int32)


def _loss_logits(rng, sparse):
    return {"logits": _f(rng, R, C), ("labels" if sparse else "target"):
            _labels(rng) if sparse else _pos(rng, R, C),
            "probs": _f(rng, R, C), "grad": _f(rng, R, C)}


SPECS: Dict[str, Spec] = {
    "sgemm": Spec(_C.sgemm, lambda r: {"a": _f(r, R, 3), "b": _f(r, 3, C), "c": _f(r, R, C)},
                  {"c"}),
    "bias_act_fwd": Spec(_C.bias_act_fwd, lambda r: {"act": "relu", "x": _f(r, R, C),
                                                     "bias": _f(r, C), "y": _f(r, R, C)},
                         {"y"}, {"x", "y"}),
    "act_bwd": Spec(_C.act_bwd, lambda r: {"act": "tanh", "y": _f(r, R, C),
                                           "dy": _f(r, R, C), "dx": _f(r, R, C)},
                    {"dx"}, {"y", "dy", "dx"}),
    "dense_fwd": Spec(_C.dense_fwd, lambda r: {"act": 1, "x": _f(r, R, 3), "w": _f(r, 3, C),
                                               "bias": _f(r, C), "y": _f(r, R, C)}, {"y"}),
    "bias_grad": Spec(_C.bias_grad, lambda r: {"dz": _f(r, R, C), "db": _f(r, C)},
                      {"db"}, {"dz"}),
    "softmax_cce_logits": Spec(_C.softmax_cce_logits, lambda r: _loss_logits(r, False),
                               {"probs", "grad"}),
    "softmax_sparse_cce_logits": Spec(_C.softmax_sparse_cce_logits,
                                      lambda r: _loss_logits(r, True), {"probs", "grad"}),
    "sigmoid_bce_logits": Spec(_C.sigmoid_bce_logits, lambda r: _loss_logits(r, False),
                               {"probs", "grad"}),
    "cce_probs": Spec(_C.cce_probs, lambda r: {"probs": _pos(r, R, C), "target": _pos(r, R, C),
                                               "grad": _f(r, R, C)}, {"grad"}),
    "sparse_cce_probs": Spec(_C.sparse_cce_probs, lambda r: {
        "probs": _pos(r, R, C), "labels": _labels(r), "grad": _f(r, R, C)}, {"grad"}),
    "bce_probs": Spec(_C.bce_probs, lambda r: {"probs": _pos(r, R, C), "target": _pos(r, R, C),
                                               "grad": _f(r, R, C)}, {"grad"}),
    "mse": Spec(_C.mse, lambda r: {"pred": _f(r, R, C), "target": _f(r, R, C),
                                   "grad": _f(r, R, C)}, {"grad"}),
    "mae": Spec(_C.mae, lambda r: {"pred": _f(r, R, C), "target": _f(r, R, C),
                                   "grad": _f(r, R, C)}, {"grad"}),
    "categorical_accuracy_sum": Spec(_C.categorical_accuracy_sum, lambda r: {
        "pred": _f(r, R, C), "target": _f(r, R, C)}, set()),
    "sparse_categorical_accuracy_sum": Spec(_C.sparse_categorical_accuracy_sum, lambda r: {
        "pred": _f(r, R, C), "labels": _labels(r)}, set(), shape_free={"pred"}),
    "binary_accuracy_sum": Spec(_C.binary_accuracy_sum, lambda r: {
        "pred": _f(r, R, C), "target": _f(r, R, C)}, set()),
    "mse_sum": Spec(_C.mse_sum, lambda r: {"pred": _f(r, R, C), "target": _f(r, R, C)}, set()),
    "mae_sum": Spec(_C.mae_sum, lambda r: {"pred": _f(r, R, C), "target": _f(r, R, C)}, set()),
    "vexpf": Spec(_C.vexpf, lambda r: {"x": _f(r, R, C), "y": _f(r, R, C)}, {"y"},
                  {"x", "y"}),
    "sumsq": Spec(_C.sumsq, lambda r: {"x": _f(r, 9)}, set(), {"x"}, {"x"}),
    "scale": Spec(_C.scale, lambda r: {"x": _f(r, 9), "s": 2.0}, {"x"}, {"x"}, {"x"}),
    "sgd_step": Spec(_C.sgd_step, lambda r: {"p": _f(r, 9), "g": _f(r, 9), "velocity": _f(r, 9),
                                             "lr": 0.1, "momentum": 0.9},
                     {"p", "velocity"}, {"p", "g", "velocity"}),
    "adam_step": Spec(_C.adam_step, lambda r: {"p": _f(r, 9), "g": _f(r, 9), "m": _f(r, 9),
                                               "v": _pos(r, 9), "lr": 0.1, "step": 2},
                      {"p", "m", "v"}, {"p", "g", "m", "v"}),
    "rmsprop_step": Spec(_C.rmsprop_step, lambda r: {
        "p": _f(r, 9), "g": _f(r, 9), "vel": _pos(r, 9), "mom": _f(r, 9), "avg": _f(r, 9) * 0.1,
        "lr": 0.1, "momentum": 0.5}, {"p", "vel", "mom", "avg"}, {"p", "g", "vel", "mom", "avg"}),
    "gather_rows_f32": Spec(_C.gather_rows_f32, lambda r: {
        "src": _f(r, 7, 3), "idx": r.integers(0, 7, R).astype(np.int64), "dst": _f(r, R, 3)},
        {"dst"}),
    "gather_rows_i32": Spec(_C.gather_rows_i32, lambda r: {
        "src": r.integers(0, 9, (7, 3)).astype(np.int32),
        "idx": r.integers(0, 7, R).astype(np.int64),
        "dst": r.integers(0, 9, (R, 3)).astype(np.int32)}, {"dst"}),
    "dropout_fwd": Spec(_C.dropout_fwd, lambda r: {
        "x": _f(r, R, C), "u": _pos(r, R, C), "rate": 0.5, "mask": _f(r, R, C),
        "y": _f(r, R, C)}, {"mask", "y"}, {"x", "u", "mask", "y"}),
    "mul": Spec(_C.mul, lambda r: {"a": _f(r, R, C), "b": _f(r, R, C), "out": _f(r, R, C)},
                {"out"}, {"a", "b", "out"}),
    "add": Spec(_C.add, lambda r: {"a": _f(r, R, C), "b": _f(r, R, C), "out": _f(r, R, C)},
                {"out"}, {"a", "b", "out"}),
}


def _arrays(args):
    return [k for k, v in args.items() if isinstance(v, np.ndarray)]


def _wrong_dtype(a):
    return a.astype(np.float64 if a.dtype == np.float32 else
                    (np.int64 if a.dtype == np.int32 else np.int32))


def _non_contiguous(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = big[..., ::2]
    view[...] = a
    return view


def _bigger(a):
    bigger = np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)
    bigger[..., :a.shape[-1]] = a
    return bigger


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


DEFECTS = ["list", "dtype", "byteswap", "ndim", "shape", "noncontig", "readonly", "overlap"]


def _cases():
    for fname, spec in SPECS.items():
        args = spec.make(np.random.default_rng(0))
        for arg in _arrays(args):
            for defect in DEFECTS:
                if defect == "readonly" and arg not in spec.outputs:
                    continue
                if defect == "overlap" and (
                        arg not in spec.outputs
                        or _overlapping_call(spec, args, arg)[0] is None):
                    continue
                if defect == "shape" and arg in spec.shape_free:
                    continue
                yield pytest.param(fname, arg, defect, id=f"{fname}-{arg}-{defect}")


def _overlapping_call(spec, args, out_name):
    """args with output ``out_name`` sharing memory (partially) with an input
    of the same dtype, or None when the function has no such input."""
    out = args[out_name]
    inputs = [k for k in _arrays(args) if k not in spec.outputs and args[k].dtype == out.dtype]
    if not inputs:
        return None, None
    in_name = inputs[0]
    src = args[in_name]
    base = np.zeros(src.size + out.size + 1, out.dtype)
    base[:src.size] = src.ravel()
    new = dict(args)
    new[in_name] = base[:src.size].reshape(src.shape)
    new[out_name] = base[1:1 + out.size].reshape(out.shape)  # off by one element
    return new, in_name


@pytest.mark.parametrize("fname,arg,defect", list(_cases()))
def test_bad_argument_is_named(fname, arg, defect):
    spec = SPECS[fname]
    args = spec.make(np.random.default_rng(0))
    spec.fn(**spec.make(np.random.default_rng(0)))  # the valid call works
    a = args[arg]
    names = [arg]
    if defect == "list":
        args[arg], exc = a.tolist(), TypeError
    elif defect == "dtype":
        args[arg], exc = _wrong_dtype(a), TypeError
    elif defect == "byteswap":
        args[arg], exc = a.astype(a.dtype.newbyteorder()), TypeError
    elif defect == "ndim":
        args[arg] = np.asarray(a.ravel()[0]) if arg in spec.any_ndim else a[None]
        exc = ValueError
    elif defect == "shape":
        args[arg], exc = _bigger(a), ValueError
    elif defect == "noncontig":
        args[arg], exc = _non_contiguous(a), ValueError
    elif defect == "readonly":
        args[arg], exc = _read_only(a), ValueError
    else:
        args, other = _overlapping_call(spec, args, arg)
        names.append(other)
        exc = ValueError
    with pytest.raises(exc) as info:
        spec.fn(**args)
    msg = str(info.value)
    assert msg.startswith(fname.split("_rows")[0]) or fname in msg
    assert all(re.search(rf"'{re.escape(n)}'", msg) for n in names), msg


# ---- value checks: labels, indices, scalars --------------------------------------------

@pytest.mark.parametrize("bad", [-1, C, 1000])
@pytest.mark.parametrize("fname", ["softmax_sparse_cce_logits", "sparse_cce_probs",
                                   "sparse_categorical_accuracy_sum"])
def test_labels_out_of_range(fname, bad):
    spec = SPECS[fname]
    args = spec.make(np.random.default_rng(0))
    args["labels"][2] = bad
    with pytest.raises(ValueError, match=rf"'labels'.*{bad}.*index 2"):
        spec.fn(**args)


@pytest.mark.parametrize("bad", [-1, 7, 2 ** 40])
def test_gather_index_out_of_range(bad):
    args = SPECS["gather_rows_f32"].make(np.random.default_rng(0))
    args["idx"][-1] = bad
    with pytest.raises(ValueError, match=r"'idx'"):
        _C.gather_rows_f32(**args)


@pytest.mark.parametrize("fname,changes,name", [
    ("bias_act_fwd", {"act": 9}, "act"),
    ("bias_act_fwd", {"act": "gelu"}, "act"),
    ("bias_act_fwd", {"act": 1.5}, "act"),
    ("adam_step", {"step": 0}, "step"),
    ("sgd_step", {"velocity": None}, "velocity"),
    ("sgd_step", {"momentum": -0.1}, "momentum"),
    ("rmsprop_step", {"mom": None}, "mom"),
    ("dropout_fwd", {"rate": 1.5}, "rate"),
    ("dropout_fwd", {"rate": -0.1}, "rate"),
])
def test_bad_scalar_or_missing_buffer(fname, changes, name):
    spec = SPECS[fname]
    args = spec.make(np.random.default_rng(0))
    args.update(changes)
    with pytest.raises((ValueError, TypeError), match=rf"'{name}'"):
        spec.fn(**args)


def test_set_num_threads_rejects_zero():
    with pytest.raises(ValueError, match="'n'"):
        _C.set_num_threads(0)


def test_may_alias_outputs_accept_exact_alias():
    """Where the contract says "may alias", the very same array is fine."""
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    _C.bias_act_fwd("relu", x, None, x)
    np.testing.assert_array_equal(x[x < 0], [])
    a = np.ones(5, np.float32)
    _C.add(a, a, a)
    np.testing.assert_array_equal(a, 2)


def test_empty_batch_rejected_by_losses():
    z = np.zeros((0, 3), np.float32)
    with pytest.raises(ValueError, match="'logits'"):
        _C.softmax_cce_logits(z, z.copy(), z.copy(), z.copy())


# ---- backend-level checks --------------------------------------------------------------

def test_backend_rejects_unknown_kinds_and_missing_probs():
    be = get_backend("cpu")
    x = np.zeros((2, 3), np.float32)
    acc = np.zeros(1)
    with pytest.raises(ValueError, match="loss kind"):
        be.loss("hinge", x, x, x.copy(), acc)
    with pytest.raises(ValueError, match="'probs'"):
        be.loss("softmax_cce_logits", x, x, x.copy(), acc, None)
    with pytest.raises(ValueError, match="metric kind"):
        be.metric("auc", x, x, acc)
    with pytest.raises(ValueError, match="activation"):
        be.bias_act_fwd(x, None, "gelu", x)


def test_backend_gather_rows_checks():
    be = get_backend("cpu")
    src = np.zeros((6, 2, 3), np.float32)
    idx = np.array([0, 5], np.int64)
    with pytest.raises(ValueError, match="'out'"):
        be.gather_rows(src, idx, np.zeros((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="'out'"):
        be.gather_rows(src, idx, np.zeros((2, 2, 6), np.float32)[:, :, ::2])
    with pytest.raises(TypeError, match="'src'"):
        be.gather_rows(src.astype(np.float64), idx, np.zeros((2, 2, 3), np.float32))
    with pytest.raises(TypeError, match="'idx'"):
        be.gather_rows(src, idx.astype(np.int32), np.zeros((2, 2, 3), np.float32))
