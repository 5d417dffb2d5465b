"""Open Inference Protocol (KServe v2 / Triton) REST codec, with the binary tensor extension.

Requests carry tensors as JSON ``data`` or, with the binary extension, as raw bytes after a
JSON header whose length is given by the ``Inference-Header-Content-Length`` header; each
binary input says its size in ``parameters.binary_data_size``. Responses use binary output
when the request asks for it (per output ``parameters.binary_data`` or request-wide
``parameters.binary_data_output``). BYTES elements are length-prefixed (uint32 LE) in
binary form.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.errors import BadRequestError, InvalidInputError, PayloadTooLargeError
from services.registry.schema import NUMPY_TO_OIP, OIP_TO_NUMPY, TensorSpec


@dataclass
class InferRequest:
    """A decoded inference request."""

    id: str | None
    feeds: dict[str, np.ndarray]
    rows: int
    outputs: list[str] | None
    binary_outputs: dict[str, bool]
    binary_default: bool
    parameters: dict[str, Any] = field(default_factory=dict)  # the request-wide ones

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data."""
        return self.binary_outputs.get(name, self.binary_default)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc}", field="body") from None


def decode_request(
    body: bytes, header_length: str | None, specs: list[TensorSpec], *, max_rows: int
) -> InferRequest:
    """Decode and validate an infer request against the model's input tensors."""
    doc, binary = _split_body(body, header_length)
    if not isinstance(doc, dict):
        raise InvalidInputError("the request must be a JSON object", field="body")
    feeds, rows = _decode_inputs(doc.get("inputs"), specs, binary)
    _check_rows(rows, max_rows)
    names, binary_outputs = _decode_outputs(doc.get("outputs"))
    params = doc.get("parameters") or {}
    binary_default = bool(isinstance(params, dict) and params.get("binary_data_output"))
    req_id = doc.get("id")
    return InferRequest(
        id=str(req_id) if req_id is not None else None,
        feeds=feeds,
        rows=rows,
        outputs=names,
        binary_outputs=binary_outputs,
        binary_default=binary_default,
        parameters=params if isinstance(params, dict) else {},
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON header and the binary tail (empty without the binary extension)."""
    if header_length is None:
        return _json(body), b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequestError(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}",
            field="Inference-Header-Content-Length",
        ) from None
    if not 0 < n <= len(body):
        raise BadRequestError(
            f"Inference-Header-Content-Length {n} is outside the body (length {len(body)})",
            field="Inference-Header-Content-Length",
        )
    return _json(body[:n]), body[n:]


def _decode_inputs(
    inputs: Any, specs: list[TensorSpec], binary: bytes
) -> tuple[dict[str, np.ndarray], int]:
    """Every input tensor, checked against ``specs``; the binary data claimed exactly."""
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors", field="inputs")
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    rows: int | None = None
    for k, tensor in enumerate(inputs):
        spec = _input_spec(tensor, k, by_name, feeds)
        array, used = _decode_tensor(tensor, spec, binary, offset, f"inputs[{k}]")
        offset += used
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInputError(
                f"input {spec.name!r} has batch size {array.shape[0]}, others have {rows}",
                field=f"inputs[{k}].shape",
            )
        feeds[spec.name] = array
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise InvalidInputError(
            f"missing input tensor {missing[0]!r}", field=f"inputs.{missing[0]}"
        )
    if offset != len(binary):
        raise BadRequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input",
            field="binary_data_size",
        )
    assert rows is not None  # inputs is non-empty
    return feeds, rows


def _input_spec(
    tensor: Any, k: int, by_name: dict[str, TensorSpec], seen: dict[str, np.ndarray]
) -> TensorSpec:
    """The model input that ``inputs[k]`` names (once)."""
    if not isinstance(tensor, dict):
        raise InvalidInputError(f"inputs[{k}] must be an object", field=f"inputs[{k}]")
    name = tensor.get("name")
    if name not in by_name:
        raise InvalidInputError(
            f"inputs[{k}].name {name!r} is not an input of this model "
            f"(inputs: {', '.join(by_name)})",
            field=f"inputs[{k}].name",
        )
    if name in seen:
        raise InvalidInputError(f"input {name!r} is given twice", field=f"inputs[{k}].name")
    return by_name[name]


def _check_rows(rows: int, max_rows: int) -> None:
    if rows < 1:
        raise InvalidInputError("the batch is empty", field="inputs[0].shape")
    if rows > max_rows:
        raise PayloadTooLargeError(
            f"batch of {rows} rows is over the limit of {max_rows}",
            limit=max_rows,
            field="inputs[0].shape",
        )


def _decode_outputs(req_outputs: Any) -> tuple[list[str] | None, dict[str, bool]]:
    """The requested output names (None: all) and their per-output binary choice."""
    if req_outputs is None:
        return None, {}
    if not isinstance(req_outputs, list):
        raise InvalidInputError("'outputs' must be a list", field="outputs")
    names: list[str] = []
    binary_outputs: dict[str, bool] = {}
    for k, out in enumerate(req_outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInputError(f"outputs[{k}] needs a name", field=f"outputs[{k}].name")
        names.append(out["name"])
        params = out.get("parameters") or {}
        if isinstance(params, dict) and "binary_data" in params:
            binary_outputs[out["name"]] = bool(params["binary_data"])
    return names, binary_outputs


def _decode_tensor(
    tensor: dict[str, Any], spec: TensorSpec, binary: bytes, offset: int, path: str
) -> tuple[np.ndarray, int]:
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise InvalidInputError(
            f"{path} ({spec.name}) must have datatype {spec.datatype}, got {datatype!r}",
            field=f"{path}.datatype",
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or len(shape) != len(spec.shape)
        or any(want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True))
    ):
        raise InvalidInputError(
            f"{path} ({spec.name}) has shape {shape!r}; the model takes {spec.shape} (-1: any)",
            field=f"{path}.shape",
        )
    count = math.prod(shape)
    dtype = np.dtype(OIP_TO_NUMPY[spec.datatype])
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequestError(
                f"{path}.parameters.binary_data_size {size!r} is beyond the binary data",
                field=f"{path}.parameters.binary_data_size",
            )
        raw = binary[offset : offset + size]
        if spec.datatype == "BYTES":
            array = _unpack_bytes(raw, count, path)
        else:
            if size != count * dtype.itemsize:
                raise InvalidInputError(
                    f"{path} ({spec.name}): {size} bytes do not hold {count} {spec.datatype} values",
                    field=f"{path}.parameters.binary_data_size",
                )
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        used = size
    else:
        if "data" not in tensor:
            raise InvalidInputError(f"{path} ({spec.name}) has no data", field=f"{path}.data")
        array = _from_json(tensor["data"], dtype, spec, path)
        if array.size != count:
            raise InvalidInputError(
                f"{path} ({spec.name}) has {array.size} values, shape {shape} needs {count}",
                field=f"{path}.data",
            )
        used = 0
    array = array.reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"{path} ({spec.name}) holds NaN or infinity", field=f"{path}.data")
    return array, used


def _from_json(data: Any, dtype: np.dtype, spec: TensorSpec, path: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInputError(f"{path}.data must be a list", field=f"{path}.data")
    if spec.datatype == "BYTES":
        flat = _flatten(data)
        return np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object)
    try:
        array = np.array(data)
    except ValueError:
        raise InvalidInputError(f"{path}.data is ragged", field=f"{path}.data") from None
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "b" and spec.datatype != "BOOL"):
        raise InvalidInputError(
            f"{path}.data must hold {spec.datatype} numbers, got {array.dtype.kind!r} values",
            field=f"{path}.data",
        )
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise InvalidInputError(f"{path}.data must hold integers", field=f"{path}.data")
    return array.astype(dtype, copy=False).ravel()


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _unpack_bytes(raw: bytes, count: int, path: str) -> np.ndarray:
    values = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise InvalidInputError(f"{path}: truncated BYTES data", field=f"{path}.data")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        values.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise InvalidInputError(
            f"{path}: trailing bytes after {count} BYTES values", field=f"{path}.data"
        )
    return np.array(values, dtype=object)


def encode_response(
    model: str,
    version: str,
    req: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as a v2 response; returns (body, extra headers)."""
    names = req.outputs if req.outputs is not None else list(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise InvalidInputError(
            f"requested output {unknown[0]!r} is not an output of this model (outputs: {', '.join(outputs)})",
            field="outputs",
        )
    doc_outputs = []
    chunks: list[bytes] = []
    for name in names:
        array = outputs[name]
        datatype = "BYTES" if array.dtype == object else NUMPY_TO_OIP.get(array.dtype, "FP32")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if req.wants_binary(name):
            raw = _pack(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = (
                array.ravel().tolist()
                if datatype != "BYTES"
                else [
                    v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                    for v in array.ravel()
                ]
            )
        doc_outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": doc_outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc)
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def _pack(array: np.ndarray) -> bytes:
    if array.dtype == object:
        parts = []
        for v in array.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> dict[str, Any]:
    """The v2 model metadata document."""
    return {
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": [s.model_dump() for s in inputs],
        "outputs": [s.model_dump() for s in outputs],
    }
