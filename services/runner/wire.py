"""The split shape's frames: a batch of tensors as raw bytes, nothing pickled.

A frame is ``SKW1``, the header's length (4 bytes, little-endian), a JSON header and the
tensors' buffers back to back::

    {"model": "fraud", "version": "1", "tensors": [["features", "<f4", [32, 7]], ...]}

Each tensor is its numpy buffer in C order, read back with ``np.frombuffer`` (no copy);
the header names it, gives its dtype (``numpy.dtype.str``) and its shape. String tensors
travel as fixed-width unicode and come back as the object arrays ONNX Runtime takes. An
error travels as a header with ``"error"`` and no tensors. A malformed frame raises
``BadRequestError`` naming what is wrong; object arrays of anything but strings are refused.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from services.errors import BadRequestError

MAGIC = b"SKW1"
_PREFIX = struct.Struct("<4sI")
# dtype kinds a frame carries: bool, integers, floats, complex, fixed-width strings.
_KINDS = frozenset("biufcSU")

Tensors = dict[str, np.ndarray]


def encode(header: dict[str, Any], tensors: Tensors | None = None) -> bytes:
    """One frame: ``header`` (JSON-encodable) plus ``tensors`` as raw buffers."""
    specs: list[list[Any]] = []
    buffers: list[bytes | memoryview] = []
    for name, array in (tensors or {}).items():
        a = np.asarray(array)
        spec: list[Any] = [name]
        if a.dtype.kind == "O":
            # Strings (ONNX string tensors): fixed-width unicode on the wire.
            try:
                a = a.astype(str)
            except (TypeError, ValueError) as exc:
                raise BadRequestError(
                    f"tensor {name!r} holds objects that are not strings"
                ) from exc
            spec.append("object")
        if a.dtype.kind not in _KINDS:
            raise BadRequestError(f"tensor {name!r} has dtype {a.dtype}, which no frame carries")
        a = np.ascontiguousarray(a)
        spec[1:1] = [a.dtype.str, list(a.shape)]
        specs.append(spec)
        buffers.append(a.data.cast("B") if a.nbytes else b"")
    head = orjson.dumps({**header, "tensors": specs}, default=str)
    return b"".join([_PREFIX.pack(MAGIC, len(head)), head, *buffers])


def decode(frame: bytes | bytearray | memoryview) -> tuple[dict[str, Any], Tensors]:
    """(header, tensors) of a frame; the arrays view ``frame``'s buffer (read-only)."""
    view = memoryview(frame)
    if len(view) < _PREFIX.size:
        raise BadRequestError(f"a frame of {len(view)} bytes is too short")
    magic, size = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise BadRequestError(f"not a servekit frame (starts with {bytes(magic)!r})")
    start = _PREFIX.size + size
    if start > len(view):
        raise BadRequestError(f"frame header of {size} bytes runs past the frame's end")
    try:
        header = orjson.loads(view[_PREFIX.size : start])
        specs = header.pop("tensors", [])
        tensors, end = _tensors(view, specs, start)
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequestError(f"malformed frame header: {exc}") from exc
    if end != len(view):
        raise BadRequestError(f"frame has {len(view) - end} bytes past its last tensor")
    return header, tensors


def _tensors(view: memoryview, specs: list[Any], offset: int) -> tuple[Tensors, int]:
    """The tensors ``specs`` describe, read from ``view`` from ``offset``; and the end."""
    tensors: Tensors = {}
    for spec in specs:
        name, dtype_str, shape = spec[0], spec[1], spec[2]
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _KINDS or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: dtype {dtype_str} or shape {shape} not allowed")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(view):
            raise ValueError(f"tensor {name!r} runs past the frame's end")
        a = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)
        if len(spec) > 3 and spec[3] == "object":
            a = a.astype(object)
        tensors[str(name)] = a
        offset += nbytes
    return tensors, offset
