"""Native models: a model in its training framework, and its export to ONNX.

One class per source framework (scikit-learn through skl2onnx, PyTorch through
``torch.onnx.export``), each with the held-out batch the conversion checks parity on.
The frameworks are optional extras, imported when a model is run or exported.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flows.parity import Task
from services.registry.schema import ModelSchema
from services.runner.feeds import Feeds
from services.runner.trt import Profile


@dataclass
class NativeModel:
    """A model in its training framework, with the held-out batch to check it on.

    Attributes:
        model: the scikit-learn estimator or ``torch.nn.Module``.
        schema: the served schema; its input and output names are the ONNX graph's.
        feeds: the held-out parity batch, by input name.
        task: classifier / regressor / embedding (how agreement is measured).
        metrics: training metrics, registered with the version.
        tokenizer: a text model's tokenizer.json, stored beside the artifact.
        description: registered with the version.
    """

    model: Any
    schema: ModelSchema
    feeds: Feeds
    task: Task = "classifier"
    metrics: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    description: str | None = None
    framework = "native"

    @property
    def primary_output(self) -> str:
        """The output agreement is measured on."""
        return self.schema.probability_output or self.schema.outputs[0].name

    def predict(self, feeds: Feeds) -> Feeds:
        """The native model's outputs, by the schema's output names."""
        raise NotImplementedError

    def export(self, opset: int) -> bytes:
        """The ONNX model's bytes."""
        raise NotImplementedError


@dataclass
class SklearnModel(NativeModel):
    """A scikit-learn estimator on one float32 input tensor (skl2onnx, no zipmap)."""

    framework = "sklearn"

    def predict(self, feeds: Feeds) -> Feeds:
        """Labels and probabilities of a classifier, else the regressor's predictions."""
        x = feeds[self.schema.inputs[0].name]
        names = [o.name for o in self.schema.outputs]
        if self.task == "classifier":
            proba = self.model.predict_proba(x).astype(np.float32)
            label = self.model.predict(x)
            prob_name = self.primary_output
            label_name = next((n for n in names if n != prob_name), "label")
            return {label_name: label, prob_name: proba}
        return {names[0]: np.asarray(self.model.predict(x), dtype=np.float32).reshape(len(x), -1)}

    def export(self, opset: int) -> bytes:
        """skl2onnx's graph (``opset`` is a ceiling: it emits the lowest one it needs)."""
        try:
            from skl2onnx import convert_sklearn
            from skl2onnx.common.data_types import FloatTensorType
        except ImportError as exc:
            raise RuntimeError("exporting scikit-learn needs the 'demo' extra") from exc
        spec = self.schema.inputs[0]
        options = {id(self.model): {"zipmap": False}} if self.task == "classifier" else None
        onx = convert_sklearn(
            self.model,
            initial_types=[(spec.name, FloatTensorType([None, *spec.shape[1:]]))],
            options=options,
            target_opset={"": opset, "ai.onnx.ml": 3},
        )
        return onx.SerializeToString()


@dataclass
class TorchModel(NativeModel):
    """A ``torch.nn.Module`` taking the schema's inputs in order (torch.onnx.export, dynamo=False).

    Attributes:
        dynamic_axes: per input, its dynamic axes (default: axis 0, "batch").
        output_axes: per output, its dynamic axes (default: axis 0, "batch").
    """

    dynamic_axes: dict[str, dict[int, str]] | None = None
    output_axes: dict[str, dict[int, str]] | None = None
    framework = "torch"

    def _torch(self) -> Any:
        try:
            import torch
        except ImportError as exc:
            raise RuntimeError("exporting PyTorch needs the 'convert' extra") from exc
        return torch

    def predict(self, feeds: Feeds) -> Feeds:
        """The module's outputs (in inference mode), by the schema's output names."""
        torch = self._torch()
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in self.schema.inputs]
        with torch.inference_mode():
            out = self.model(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return {
            spec.name: t.detach().cpu().numpy()
            for spec, t in zip(self.schema.outputs, outs, strict=True)
        }

    def export(self, opset: int) -> bytes:
        """The TorchScript-based export, traced on the held-out batch."""
        torch = self._torch()
        inputs = [i.name for i in self.schema.inputs]
        outputs = [o.name for o in self.schema.outputs]
        axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in inputs + outputs}
        axes.update(self.dynamic_axes or {})
        axes.update(self.output_axes or {})
        args = tuple(torch.from_numpy(np.ascontiguousarray(self.feeds[n])) for n in inputs)
        buf = io.BytesIO()
        with torch.inference_mode():
            torch.onnx.export(
                self.model,
                args,
                buf,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # the dynamo exporter needs onnxscript and ran 12-30 % slower
            )
        return buf.getvalue()

    def profile(self, max_batch: int, max_sequence: int) -> Profile:
        """TensorRT (min, opt, max) shapes: batch 1..max_batch, sequence 1..max_sequence."""
        out: Profile = {}
        axes = self.dynamic_axes or {}
        for spec in self.schema.inputs:
            shape = self.feeds[spec.name].shape
            lo, opt, hi = [1, *shape[1:]], [min(8, max_batch), *shape[1:]], [max_batch, *shape[1:]]
            for ax in axes.get(spec.name, {}):
                if ax >= 1:
                    lo[ax], hi[ax] = 1, max(max_sequence, shape[ax])
            out[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
        return out
