"""The engines an exported encoder runs on, and how this process opens a file for each.

Every opened encoder has ONNX Runtime's call shape, ``run(output_names, feeds)``, so the
checks, the benchmark and the served python-backend models run them alike.
"""

from __future__ import annotations

import enum
from pathlib import Path

from ubm_build.serving.triton_models.engine_model import Session
from ubm_build.serving.triton_models.onnx_model import onnx_session


class Engine(enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    PYTORCH = "pytorch"
    """The trained BERT itself (a Hugging Face directory), for the GPU python-backend path."""

    @property
    def suffix(self) -> str:
        """The suffix of this engine's encoder files ("" for PyTorch's directory)."""
        return {"onnxruntime": ".onnx", "openvino": ".xml", "tensorrt": ".plan"}.get(self.value, "")

    @property
    def on_gpu(self) -> bool:
        """Whether it runs on NVIDIA GPUs only."""
        return self is Engine.TENSORRT


def engine_of(path: Path) -> Engine:
    """The engine that runs the encoder file `path`, by its suffix (a directory: PyTorch)."""
    if path.is_dir():
        return Engine.PYTORCH
    for engine in Engine:
        if engine.suffix and path.suffix == engine.suffix:
            return engine
    raise ValueError(f"{path}: no engine runs {path.suffix or 'suffix-less'} files")


def open_encoder(
    path: Path, *, threads: int = 0, precision: str = "f32", device: str = "cpu"
) -> Session:
    """`path` opened with its engine; `threads` 0: all cores; `precision`: OpenVINO's ("f32",
    "bf16") or PyTorch's ("fp32", "fp16"); `device`: PyTorch's."""
    engine = engine_of(path)
    if engine is Engine.PYTORCH:
        from ubm_build.serving.triton_models.torch_model import TorchSession

        return TorchSession(path, device=device, precision=precision)
    if engine is Engine.OPENVINO:
        from ubm_build.serving.triton_models.openvino_model import OpenVinoSession

        return OpenVinoSession(path, threads, precision)
    if engine is Engine.TENSORRT:
        from ubm_build.export.tensorrt import TensorRTSession

        return TensorRTSession(path)
    return onnx_session(path, threads)
