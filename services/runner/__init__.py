"""The model runner: the model pool, the adaptive batcher, request tensors (feeds), worker threads, the inline watchdog, backends (ONNX Runtime, TensorRT) and the multi-model memory budget."""
