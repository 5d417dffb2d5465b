"""ONNX Runtime's thread spinning on against off, in process, side by side: text-embed
(all-MiniLM-L6-v2) rows per second and CPU per row at batch 1 and 32, 16 and 64 tokens.

Two sessions of the same model, one with ``session.intra_op.allow_spinning`` and
``session.inter_op.allow_spinning`` at ONNX Runtime's default (on) and one with both off
(``SERVEKIT_ORT_SPINNING=false``, servekit's default), measured in alternating one-second
slices (on, off, off, on, ...) so that a shared machine's drifting load falls on both
alike. Reports the median of the slices. What this decides: whether turning spinning off,
which leaves the cores to the event loop between calls (README, overload), costs
throughput.

Writes benchmarks/results/ort_spinning.json.

    python -m benchmarks.ort_spinning [--store DIR] [--threads 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.text_serving import MODEL, ensure_store, texts_of_length  # noqa: E402


def measure(
    backend: Any, batches: list[Any], rows_per_batch: int, seconds: float
) -> tuple[float, float]:
    """(rows per second, process CPU milliseconds per row) over ``seconds``."""
    backend.run(batches[0])
    rows = k = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        backend.run(batches[k % len(batches)])
        rows += rows_per_batch
        k += 1
    elapsed = time.perf_counter() - t0
    return rows / elapsed, (time.process_time() - cpu0) * 1000 / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="registry with text-embed")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=6, help="slices per side and point")
    parser.add_argument("--slice-seconds", type=float, default=1.0)
    args = parser.parse_args()

    from tokenizers import Tokenizer

    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry
    from services.request.tokenizer import TextEncoder
    from services.runner.backends import OnnxRuntimeBackend

    store = ensure_store(args.store)
    registry = ModelRegistry(LocalStore(store))
    mv = registry.get(MODEL)
    artifact = registry.load_artifact(mv)
    encoder = TextEncoder.for_version(registry, mv)
    tok = Tokenizer.from_file(str(store / MODEL / mv.version / "tokenizer.json"))
    tok.no_padding()
    sides = {
        spinning: OnnxRuntimeBackend(
            artifact, providers=["CPUExecutionProvider"], threads=args.threads, spinning=spinning
        )
        for spinning in (True, False)
    }
    doc: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "points": {}}
    for tokens in (16, 64):
        texts = texts_of_length(tok, tokens, 256, seed=tokens)
        for batch in (1, 32):
            batches = [
                encoder.encode(texts[i : i + batch]) for i in range(0, 256 - batch + 1, batch)
            ]
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for r in range(args.rounds):
                for spinning in (True, False) if r % 2 == 0 else (False, True):
                    runs[spinning].append(
                        measure(sides[spinning], batches, batch, args.slice_seconds)
                    )
            point: dict[str, Any] = {
                ("on" if spinning else "off"): {
                    "rows_per_s": round(statistics.median(x[0] for x in rs), 1),
                    "cpu_ms_per_row": round(statistics.median(x[1] for x in rs), 2),
                    "slices_rows_per_s": [round(x[0], 1) for x in rs],
                }
                for spinning, rs in runs.items()
            }
            point["off_over_on"] = round(point["off"]["rows_per_s"] / point["on"]["rows_per_s"], 2)
            doc["points"][f"{tokens} tokens, batch {batch}"] = point
            print(
                f"{tokens:3d} tokens batch {batch:2d}: rows/s on {point['on']['rows_per_s']:7.1f} "
                f"off {point['off']['rows_per_s']:7.1f} (off/on {point['off_over_on']:.2f}); "
                f"CPU ms/row on {point['on']['cpu_ms_per_row']:.2f} off "
                f"{point['off']['cpu_ms_per_row']:.2f}",
                flush=True,
            )
    print(f"wrote {write_results('ort_spinning', doc)}")


if __name__ == "__main__":
    main()
