"""TensorRT: building an fp16 engine from ONNX, and a runner backend for engines.

Written against TensorRT 10's Python API (``tensorrt`` package; named tensors,
``execute_async_v3``) and not yet verified against a TensorRT installation.
Every entry point says why it cannot run (``unavailable_reason``) instead of failing
deep inside TensorRT. Device buffers are PyTorch CUDA tensors, so the backend needs
``torch`` with CUDA beside ``tensorrt``; install the ``gpu`` extra.

The alternative path, ONNX Runtime's TensorRT execution provider, needs no code here
beyond its provider options (``ort_provider_options``); ``services.runner.backends`` picks it
from ``SERVEKIT_PROVIDERS``.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError
from services.registry.schema import NUMPY_TO_OIP, TensorSpec

logger = logging.getLogger(__name__)

_EXTRA = "install the 'gpu' extra (pip install 'servekit[gpu]') on a machine with a CUDA GPU"
# (min, opt, max) shape of each input of an engine's optimization profile.
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def cuda_device_count() -> int:
    """CUDA devices visible through the driver API (0 without a driver); needs no torch."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built or run here; None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"TensorRT is not installed ({_EXTRA})"
    if cuda_device_count() == 0:
        return "no CUDA device is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)"
    try:
        import torch
    except ImportError:
        return f"the TensorRT backend allocates device buffers with PyTorch; {_EXTRA}"
    if not torch.cuda.is_available():
        return "PyTorch has no CUDA (a CPU build of torch is installed)"
    return None


def build_engine(
    onnx_bytes: bytes, profile: Profile, *, fp16: bool = True, workspace_mb: int = 2048
) -> bytes:
    """Build a serialized TensorRT engine (a plan) from an ONNX model.

    Args:
        onnx_bytes: the ONNX model (fp32; TensorRT picks fp16 kernels where allowed).
        profile: (min, opt, max) shape of every input, for the dynamic axes.
        fp16: allow fp16 kernels.
        workspace_mb: the builder's workspace memory pool.

    Raises:
        ModelLoadError: TensorRT is missing, the parser rejects the model, or the build fails.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise ModelLoadError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise ModelLoadError(f"no optimization profile for the engine input {name!r}")
        lo, opt, hi = profile[name]
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelLoadError("TensorRT failed to build the engine (see its log above)")
    return bytes(plan)


class TensorRTBackend:
    """A deserialized TensorRT engine that runs batches (``services.runner.backends.Backend``).

    Inputs are copied to PyTorch CUDA tensors, outputs allocated per call at the shapes
    the execution context infers, and the copy back to the host ends each call.

    Args:
        plan: the serialized engine (built for this GPU and TensorRT version).
        device: CUDA device index.
    """

    provider = "TensorRT"

    def __init__(self, plan: bytes, *, device: int = 0) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise ModelLoadError(f"the TensorRT backend is not available: {reason}")
        import tensorrt as trt
        import torch

        self._trt = trt
        self._torch = torch
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelLoadError(
                "TensorRT cannot deserialize the engine (built for another GPU or version?)"
            )
        self.context = self.engine.create_execution_context()
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._dtypes: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
            spec = TensorSpec(
                name=name,
                datatype=NUMPY_TO_OIP.get(dtype, "FP32"),
                shape=list(self.engine.get_tensor_shape(name)),
            )
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
            else:
                self.outputs.append(spec)
        self.nbytes = len(plan)
        self._stream = torch.cuda.Stream(device=self.device)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every array's first axis is the batch."""
        torch = self._torch
        keep = []  # device tensors must outlive the asynchronous execution
        with torch.cuda.stream(self._stream):
            for spec in self.inputs:
                host = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
                dev = torch.from_numpy(host).to(self.device, non_blocking=False)
                self.context.set_input_shape(spec.name, tuple(host.shape))
                self.context.set_tensor_address(spec.name, dev.data_ptr())
                keep.append(dev)
            outs = {}
            for spec in self.outputs:
                shape = tuple(self.context.get_tensor_shape(spec.name))
                dev = torch.empty(
                    shape, dtype=_torch_dtype(torch, self._dtypes[spec.name]), device=self.device
                )
                self.context.set_tensor_address(spec.name, dev.data_ptr())
                outs[spec.name] = dev
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise ModelLoadError("TensorRT failed to run the batch")
            self._stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outs.items()}


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.int8): torch.int8,
        np.dtype(np.bool_): torch.bool,
    }[dtype]


def ort_provider_options(provider: str, *, cache_dir: Path | None = None) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA / TensorRT execution providers (documented names).

    The TensorRT EP builds fp16 engines and caches them on disk, so only the first
    session of a model pays the build (minutes for a transformer).
    """
    if provider == "TensorrtExecutionProvider":
        cache = cache_dir or Path(tempfile.gettempdir()) / "servekit-trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        return {
            "device_id": "0",
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
        }
    if provider == "CUDAExecutionProvider":
        return {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    return {}
