"""The one-command GPU check for text-embed: engine, parity, latency table.

Runs what the machine allows and says why it skips the rest:

- ONNX Runtime CPU (always), the CUDA execution provider (needs onnxruntime-gpu),
  a TensorRT fp16 engine built with ``services.runner.trt`` (needs TensorRT + a CUDA GPU), and a
  PyTorch CUDA run of the same model (the comparison where TensorRT is absent);
- parity of each against PyTorch CPU fp32 (cosine, max abs error, retrieval agreement);
- latency (p50 ms) at batch 1, 8, 32 on ~64-token inputs; NVML utilization if present.

Started by benchmarks/gpu_check.sh under a time limit; writes
benchmarks/results/gpu_check.json (or ``--out DIR``/gpu_check.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
BATCHES = (1, 8, 32)
SEQUENCE = 64
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


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
    times: list[float] = []
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


def start_gpu_sampler() -> Any:
    """servekit's own NVML sampler (the gateway's ``/metrics`` and ``GET /gpu``), run for
    real while the backends are measured (without a GPU its status says why)."""
    from monitoring.gpu import GpuSampler

    sampler = GpuSampler(interval_s=0.5, window_s=300.0)
    if not sampler.start():
        log(f"GPU sampler: {sampler.status().get('reason')}")
    return sampler


def gpu_sampler_summary(sampler: Any) -> dict[str, Any]:
    """What the sampler saw during the run, and the series it exports."""
    status = sampler.status()
    if not status.get("available"):
        return {"skipped": status.get("reason")}
    series = sorted({family.name for family in sampler.collect()})
    sampler.stop()
    log(f"GPU sampler: {status}")
    return {"status": status, "series": series}


Runner = Callable[[Feeds], np.ndarray]
"""A backend under test: token feeds in, pooled embeddings out."""


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="BERT folder to load")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per cell")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="folder of the JSON"
    )
    return parser.parse_args()


def torch_runner(embedder: Any, device: str) -> Runner:
    """The PyTorch model on ``device`` (fp32)."""
    import torch

    model = embedder.to(device)

    def run(f: Feeds) -> np.ndarray:
        with torch.inference_mode():
            out = model(*[torch.from_numpy(f[n]).to(device) for n in NAMES])
            return out.float().cpu().numpy()

    return run


def export_onnx(embedder: Any, sample: Feeds) -> bytes:
    """The model as ONNX (opset 17, dynamic batch and sequence)."""
    import torch

    buf = io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(
            embedder.to("cpu"),
            tuple(torch.from_numpy(sample[n]) for n in NAMES),
            buf,  # type: ignore[arg-type]  # torch.onnx.export writes to file objects too
            input_names=NAMES,
            output_names=["embedding"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in NAMES},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def ort_runners(onnx_bytes: bytes, runners: dict[str, Runner], skipped: dict[str, str]) -> None:
    """ONNX Runtime on the CPU, and with the CUDA execution provider where it exists."""
    import onnxruntime as ort

    from services.runner.backends import OnnxRuntimeBackend

    threads = min(8, os.cpu_count() or 1)
    cpu = OnnxRuntimeBackend(onnx_bytes, providers=["CPUExecutionProvider"], threads=threads)
    runners[f"ORT CPU ({threads} threads)"] = lambda f: cpu.run(f)["embedding"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skipped["ORT CUDA EP"] = (
            f"onnxruntime here has no CUDA provider ({ort.get_available_providers()}); "
            "install onnxruntime-gpu instead of onnxruntime"
        )
        return
    cuda = OnnxRuntimeBackend(onnx_bytes, providers=["CUDAExecutionProvider"])
    if cuda.provider == "CUDAExecutionProvider":
        runners["ORT CUDA EP"] = lambda f: cuda.run(f)["embedding"]
    else:
        skipped["ORT CUDA EP"] = "the CUDA provider failed to start (see ORT's log)"


def tensorrt_runner(onnx_bytes: bytes, runners: dict[str, Runner], skipped: dict[str, str]) -> None:
    """A TensorRT fp16 engine built from the ONNX model, where TensorRT and a GPU exist."""
    from services.errors import ModelLoadError
    from services.runner import trt

    reason = trt.unavailable_reason()
    if reason is not None:
        skipped["TensorRT fp16"] = reason
        return
    t0 = time.perf_counter()
    # (min, opt, max) batch x sequence
    profile: trt.Profile = {n: ((1, 1), (8, SEQUENCE), (max(BATCHES), 128)) for n in NAMES}
    try:
        plan = trt.build_engine(onnx_bytes, profile)
        engine = trt.TensorRTBackend(plan)
    except ModelLoadError as exc:
        skipped["TensorRT fp16"] = exc.message
        return
    runners["TensorRT fp16"] = lambda f: engine.run(f)["embedding"]
    log(f"built the TensorRT engine in {time.perf_counter() - t0:.0f} s")


def torch_cuda_runners(
    embedder: Any,
    load_embedder: Callable[[], Any],
    runners: dict[str, Runner],
    skipped: dict[str, str],
) -> None:
    """PyTorch on CUDA in fp32 and fp16: the comparison where TensorRT is absent."""
    import torch

    if not torch.cuda.is_available():
        skipped["PyTorch CUDA"] = "torch.cuda.is_available() is False (CPU build or no GPU)"
        return
    runners["PyTorch CUDA fp32"] = torch_runner(embedder, "cuda")
    half = load_embedder().half().to("cuda")

    def run_half(f: Feeds) -> np.ndarray:
        with torch.inference_mode():
            out = half(*[torch.from_numpy(f[n]).to("cuda") for n in NAMES])
            return out.float().cpu().numpy()

    runners["PyTorch CUDA fp16"] = run_half


def measure(
    runners: dict[str, Runner], reference: np.ndarray, parity_feeds: Feeds, seconds: float
) -> dict[str, dict[str, Any]]:
    """Parity against the reference and p50 latency at each batch size, per backend."""
    feeds = {b: token_feeds(b, SEQUENCE, seed=b) for b in BATCHES}
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runners.items():
        row: dict[str, Any] = {"parity": parity(reference, run(parity_feeds))}
        for b in BATCHES:
            row[f"b{b}_p50_ms"] = round(timed(run, feeds[b], seconds), 3)
        rows[name] = row
        log(f"measured {name}")
    return rows


def print_table(rows: dict[str, dict[str, Any]], skipped: dict[str, str]) -> None:
    """Latency per batch size and parity of every backend; the reason of every skip."""
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


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    try:
        import torch  # noqa: F401
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

    parity_feeds = token_feeds(64, SEQUENCE, seed=99)
    reference = torch_runner(embedder, "cpu")(parity_feeds)
    onnx_bytes = export_onnx(embedder, parity_feeds)
    log(f"exported ONNX ({len(onnx_bytes) / 1e6:.0f} MB) in {time.perf_counter() - t_start:.0f} s")
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    ort_runners(onnx_bytes, runners, skipped)
    tensorrt_runner(onnx_bytes, runners, skipped)
    torch_cuda_runners(embedder, text_model.load_embedder, runners, skipped)
    sampler = start_gpu_sampler()
    rows = measure(runners, reference, parity_feeds, args.seconds)
    print_table(rows, skipped)
    doc = {
        "sequence": SEQUENCE,
        "rows": rows,
        "skipped": skipped,
        "gpu_sampler": gpu_sampler_summary(sampler),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(doc, indent=2))
    log(f"wrote {args.out / 'gpu_check.json'} ({doc['seconds']} s)")
    return 0 if all(r["parity"]["passed"] for r in rows.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
