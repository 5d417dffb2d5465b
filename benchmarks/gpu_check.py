"""The one-command GPU check for text-embed: engine, parity, latency table.

Runs what the machine allows and says why it skips the rest:

- ONNX Runtime CPU (always), the CUDA execution provider (needs onnxruntime-gpu),
  a TensorRT fp16 engine built with ``services.runner.trt`` (needs TensorRT + a CUDA GPU), and a
  PyTorch CUDA run of the same model (the comparison where TensorRT is absent);
- parity of each against PyTorch CPU fp32 (cosine, max abs error, retrieval agreement);
- latency (p50 ms) at batch 1, 8, 32 on ~64-token inputs; NVML utilization if present.

Started by benchmarks/gpu_check.sh under a time limit; writes
benchmarks/results/gpu_check.json (or $OUT/gpu_check.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
BATCHES = (1, 8, 32)
SEQUENCE = 64


def log(msg: str) -> None:
    # A CLI: progress goes to the console as it happens.
    print(msg, flush=True)


def token_feeds(rows: int, seq: int, seed: int = 0) -> Feeds:
    """BERT token tensors: [CLS] random word pieces [SEP], ragged lengths, padded to ``seq``."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, seq), dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    for r in range(rows):
        n = int(rng.integers(seq // 2, seq + 1))
        ids[r, :n] = rng.integers(1000, 29000, size=n)
        ids[r, 0], ids[r, n - 1] = 101, 102
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def timed(run: Any, feeds: Feeds, seconds: float = 1.0) -> float:
    """p50 milliseconds of ``run(feeds)`` over ``seconds`` (after two warm-up runs)."""
    run(feeds)
    run(feeds)
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def parity(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    from flows.parity import compare

    res = compare(
        "x",
        {"embedding": ref},
        {"embedding": got},
        task="embedding",
        tolerance=1e-2,
        min_agreement=0.995,
        primary="embedding",
    )
    return {
        "max_abs_err": res.max_abs_err,
        "min_cosine": res.min_cosine or 0.0,
        "agreement": res.agreement or 0.0,
        "passed": res.passed,
    }


def nvml_summary() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"skipped": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "gpu_util_pct": util.gpu,
            "mem_used_mib": mem.used >> 20,
            "mem_total_mib": mem.total >> 20,
        }
    except pynvml.NVMLError as exc:
        return {"skipped": f"NVML: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="BERT folder to load")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per cell")
    args = parser.parse_args()

    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        import torch
    except ImportError:
        log("SKIP everything: PyTorch is not installed (the reference model needs it)")
        return 1
    try:
        from flows.recipes import text_model

        if args.model_dir is not None:
            text_model.model_dir = lambda: args.model_dir  # type: ignore[assignment]
        embedder = text_model.load_embedder()
    except (RuntimeError, ImportError, OSError) as exc:
        log(f"SKIP everything: cannot load all-MiniLM-L6-v2: {exc}")
        return 1

    feeds = {b: token_feeds(b, SEQUENCE, seed=b) for b in BATCHES}
    parity_feeds = token_feeds(64, SEQUENCE, seed=99)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def torch_run(device: str) -> Any:
        model = embedder.to(device)

        def run(f: Feeds) -> np.ndarray:
            with torch.inference_mode():
                args_ = [torch.from_numpy(f[n]).to(device) for n in names]
                out = model(*args_)
                return out.float().cpu().numpy()

        return run

    reference = torch_run("cpu")(parity_feeds)
    buf = io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(
            embedder.to("cpu"),
            tuple(torch.from_numpy(parity_feeds[n]) for n in names),
            buf,
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    onnx_bytes = buf.getvalue()
    log(f"exported ONNX ({len(onnx_bytes) / 1e6:.0f} MB) in {time.perf_counter() - t_start:.0f} s")

    import onnxruntime as ort

    from services.runner.backends import OnnxRuntimeBackend

    runners: dict[str, Any] = {}
    threads = min(8, os.cpu_count() or 1)
    cpu = OnnxRuntimeBackend(onnx_bytes, providers=["CPUExecutionProvider"], threads=threads)
    runners[f"ORT CPU ({threads} threads)"] = lambda f: cpu.run(f)["embedding"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda = OnnxRuntimeBackend(onnx_bytes, providers=["CUDAExecutionProvider"])
        if cuda.provider == "CUDAExecutionProvider":
            runners["ORT CUDA EP"] = lambda f: cuda.run(f)["embedding"]
        else:
            skipped["ORT CUDA EP"] = "the CUDA provider failed to start (see ORT's log)"
    else:
        skipped["ORT CUDA EP"] = (
            f"onnxruntime here has no CUDA provider ({ort.get_available_providers()}); "
            "install onnxruntime-gpu instead of onnxruntime"
        )

    from services.errors import ModelLoadError
    from services.runner import trt

    reason = trt.unavailable_reason()
    if reason is None:
        t0 = time.perf_counter()
        profile = {
            n: ((1, 1), (8, SEQUENCE), (max(BATCHES), 128)) for n in names
        }  # (min, opt, max) batch x sequence
        try:
            plan = trt.build_engine(onnx_bytes, profile)
            engine = trt.TensorRTBackend(plan)
            runners["TensorRT fp16"] = lambda f: engine.run(f)["embedding"]
            log(f"built the TensorRT engine in {time.perf_counter() - t0:.0f} s")
        except ModelLoadError as exc:
            skipped["TensorRT fp16"] = exc.message
    else:
        skipped["TensorRT fp16"] = reason

    if torch.cuda.is_available():
        runners["PyTorch CUDA fp32"] = torch_run("cuda")
        half = text_model.load_embedder().half().to("cuda")

        def run_half(f: Feeds) -> np.ndarray:
            with torch.inference_mode():
                out = half(*[torch.from_numpy(f[n]).to("cuda") for n in names])
                return out.float().cpu().numpy()

        runners["PyTorch CUDA fp16"] = run_half
    else:
        skipped["PyTorch CUDA"] = "torch.cuda.is_available() is False (CPU build or no GPU)"

    for name, run in runners.items():
        row: dict[str, Any] = {"parity": parity(reference, run(parity_feeds))}
        for b in BATCHES:
            row[f"b{b}_p50_ms"] = round(timed(run, feeds[b], args.seconds), 3)
        rows[name] = row
        log(f"measured {name}")

    log(f"\n{'backend':24s} {'b1 ms':>8s} {'b8 ms':>8s} {'b32 ms':>8s}  parity vs PyTorch CPU")
    for name, row in rows.items():
        p = row["parity"]
        log(
            f"{name:24s} {row['b1_p50_ms']:8.2f} {row['b8_p50_ms']:8.2f} {row['b32_p50_ms']:8.2f}"
            f"  cos>={p['min_cosine']:.5f} max|d|={p['max_abs_err']:.2e} "
            f"{'ok' if p['passed'] else 'FAIL'}"
        )
    for name, why in skipped.items():
        log(f"{name:24s} skipped: {why}")
    doc = {
        "sequence": SEQUENCE,
        "rows": rows,
        "skipped": skipped,
        "nvml": nvml_summary(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out_dir = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(doc, indent=2))
    log(f"wrote {out_dir / 'gpu_check.json'} ({doc['seconds']} s)")
    return 0 if all(r["parity"]["passed"] for r in rows.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
