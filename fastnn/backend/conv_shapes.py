"""Shape arithmetic for convolution and pooling, shared by layers and backends.

Pure Python, no arrays. Images are NHWC; padding is either a Keras name
('valid' or 'same') or explicit zero padding (top, bottom, left, right).
'same' follows Keras / TensorFlow: the output has ceil(in / stride) positions
and any odd padding goes to the bottom / right.
"""
from __future__ import annotations

import operator
from typing import Sequence, Tuple, Union

Pair = Tuple[int, int]
Pad4 = Tuple[int, int, int, int]
PaddingArg = Union[str, Sequence[int]]


def normalize_pair(value: Union[int, Sequence[int]], name: str, minimum: int = 1) -> Pair:
    """An int or a pair of ints as a pair of ints.

    Args:
        value: ``n`` (meaning ``(n, n)``) or a length-2 sequence.
        name: the argument name, for error messages.
        minimum: the smallest allowed value.

    Returns:
        ``(a, b)`` as Python ints.

    Raises:
        ValueError: not an int / pair of ints, or a value below ``minimum``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            a, b = value  # type: ignore[misc]
            if isinstance(a, bool) or isinstance(b, bool):
                raise TypeError
            pair = (operator.index(a), operator.index(b))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def same_padding(in_size: int, kernel: int, stride: int = 1, dilation: int = 1) -> Pair:
    """Keras/TensorFlow 'same' padding along one axis.

    Args:
        in_size: input length.
        kernel: kernel (or pool window) length.
        stride: step between windows.
        dilation: spacing between kernel taps.

    Returns:
        ``(before, after)``: the output has ``ceil(in_size / stride)``
        positions; ``after`` gets the extra element when the total is odd.
    """
    out = -(-in_size // stride)
    extent = dilation * (kernel - 1) + 1
    total = max((out - 1) * stride + extent - in_size, 0)
    return total // 2, total - total // 2


def conv_output_size(in_size: int, kernel: int, stride: int = 1, dilation: int = 1,
                     pad_before: int = 0, pad_after: int = 0) -> int:
    """Output length along one axis for explicit padding (may be <= 0 when the
    kernel does not fit)."""
    extent = dilation * (kernel - 1) + 1
    return (in_size + pad_before + pad_after - extent) // stride + 1


def resolve_padding(padding: PaddingArg, in_hw: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int] = (1, 1),
                    dilation: Sequence[int] = (1, 1)) -> Pad4:
    """Explicit (top, bottom, left, right) zero padding.

    Args:
        padding: 'valid', 'same' (case-insensitive), or explicit padding as
            4 ints (top, bottom, left, right) or 2 ints (symmetric rows, cols).
        in_hw: input (H, W).
        kernel: kernel / pool window (kh, kw).
        strides: (sh, sw).
        dilation: (dh, dw).

    Returns:
        (top, bottom, left, right).

    Raises:
        ValueError: unknown padding name, or a malformed / negative tuple.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            top, bottom = same_padding(int(in_hw[0]), int(kernel[0]), int(strides[0]),
                                       int(dilation[0]))
            left, right = same_padding(int(in_hw[1]), int(kernel[1]), int(strides[1]),
                                       int(dilation[1]))
            return (top, bottom, left, right)
        raise ValueError(f"padding must be 'valid', 'same' or explicit ints, got {padding!r}")
    try:
        vals = tuple(int(v) for v in padding)
    except (TypeError, ValueError):
        raise ValueError(f"padding must be 'valid', 'same' or explicit ints, "
                         f"got {padding!r}") from None
    if len(vals) == 2:
        vals = (vals[0], vals[0], vals[1], vals[1])
    if len(vals) != 4 or min(vals) < 0:
        raise ValueError(f"explicit padding must be 4 non-negative ints (top, bottom, left, "
                         f"right) or 2 (rows, cols), got {padding!r}")
    return vals  # type: ignore[return-value]


def conv_output_shape(input_shape: Sequence[int], kernel_size: Union[int, Sequence[int]],
                      filters: int, strides: Union[int, Sequence[int]] = 1,
                      padding: PaddingArg = "valid",
                      dilation: Union[int, Sequence[int]] = 1) -> Tuple[int, int, int, int]:
    """NHWC output shape of a 2-D convolution.

    Args:
        input_shape: (B, H, W, C); B may be None.
        kernel_size: int or (kh, kw).
        filters: output channels F.
        strides, dilation: int or pair.
        padding: as for ``resolve_padding``.

    Returns:
        (B, Ho, Wo, F).

    Raises:
        ValueError: bad arguments, or a kernel that does not fit the input.
    """
    b, h, w, _c = input_shape
    k = normalize_pair(kernel_size, "kernel_size")
    s = normalize_pair(strides, "strides")
    d = normalize_pair(dilation, "dilation_rate")
    pt, pb, pl, pr = resolve_padding(padding, (h, w), k, s, d)
    ho = conv_output_size(h, k[0], s[0], d[0], pt, pb)
    wo = conv_output_size(w, k[1], s[1], d[1], pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {k} with dilation {d} does not fit input {(h, w)} "
                         f"with padding {(pt, pb, pl, pr)}")
    return (b, ho, wo, int(filters))


def pool_output_shape(input_shape: Sequence[int], pool_size: Union[int, Sequence[int]],
                      strides: Union[int, Sequence[int], None] = None,
                      padding: PaddingArg = "valid") -> Tuple[int, int, int, int]:
    """NHWC output shape of a 2-D max / average pool (Keras: strides default
    to the pool size).

    Returns:
        (B, Ho, Wo, C).

    Raises:
        ValueError: bad arguments, or a window that does not fit the input.
    """
    b, h, w, c = input_shape
    k = normalize_pair(pool_size, "pool_size")
    s = k if strides is None else normalize_pair(strides, "strides")
    pt, pb, pl, pr = resolve_padding(padding, (h, w), k, s)
    ho = conv_output_size(h, k[0], s[0], 1, pt, pb)
    wo = conv_output_size(w, k[1], s[1], 1, pl, pr)
    if ho < 1 or wo < 1:
        raise ValueError(f"pool window {k} does not fit input {(h, w)}")
    return (b, ho, wo, c)
