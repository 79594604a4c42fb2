"""Triton python-backend model running ``model.onnx`` with ONNX Runtime on the CPU
(`EngineModel` does the rest)."""

from pathlib import Path

import onnxruntime as ort

try:  # copied next to this file in the model repository
    import contract
    from engine_model import EngineModel
except ImportError:  # imported from the source tree (tests)
    from ubm import contract
    from ubm_build.serving.triton_models.engine_model import EngineModel

MODEL_FILE = "model.onnx"


def onnx_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `path` with every graph optimisation; 0 threads: all
    cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TritonPythonModel(EngineModel):
    def open_session(self, directory: Path, params: dict[str, str]) -> ort.InferenceSession:
        threads = int(params.get(contract.PARAM_INTRA_OP_THREADS, "0"))
        return onnx_session(directory / MODEL_FILE, threads)
