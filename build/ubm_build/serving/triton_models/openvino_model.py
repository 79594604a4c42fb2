"""Triton python-backend model running ``model.xml`` (OpenVINO IR) with OpenVINO on the CPU
(`EngineModel` does the rest).

The config's ``precision`` ("f32" or "bf16") is OpenVINO's inference precision. It is always
set: on a CPU with bf16 instructions OpenVINO would otherwise compute an fp32 graph in bf16.
``streams`` above 1 runs that many slices of a batch at once, each on its share of the threads
(OpenVINO's ``NUM_STREAMS``), instead of one slice after the other on all of them.
"""

from pathlib import Path

import numpy as np
import openvino as ov

try:  # copied next to this file in the model repository
    import contract
    from engine_model import EngineModel
except ImportError:  # imported from the source tree (tests)
    from ubm import contract
    from ubm_build.serving.triton_models.engine_model import EngineModel

MODEL_FILE = "model.xml"
PRECISIONS = ("f32", "bf16")


class OpenVinoSession:
    """A compiled OpenVINO model with ONNX Runtime's ``run`` call shape."""

    def __init__(
        self, path: Path, threads: int = 0, precision: str = "f32", streams: int = 1
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": max(streams, 1)}
        if streams <= 1:
            config["PERFORMANCE_HINT"] = "LATENCY"
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, streams) if streams > 1 else None
        self.output_names = [next(iter(o.get_names())) for o in self.compiled.outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (None: all) for `feeds`, copied out of OpenVINO's buffers."""
        results = self.request.infer(feeds)
        by_name = {name: results[self.compiled.output(name)] for name in self.output_names}
        return [np.array(by_name[name]) for name in output_names or self.output_names]

    def run_many(
        self, output_names: list[str], feeds: list[dict[str, np.ndarray]]
    ) -> list[list[np.ndarray]]:
        """`run` of each feed in `feeds`, as many at once as there are streams; in order."""
        if self.queue is None:
            return [self.run(output_names, feed) for feed in feeds]
        parts: list = [None] * len(feeds)

        def done(request: ov.InferRequest, index: int) -> None:
            parts[index] = [np.array(request.get_tensor(name).data) for name in output_names]

        self.queue.set_callback(done)
        for index, feed in enumerate(feeds):
            self.queue.start_async(feed, index)
        self.queue.wait_all()
        return parts


class TritonPythonModel(EngineModel):
    def open_session(self, directory: Path, params: dict[str, str]) -> OpenVinoSession:
        return OpenVinoSession(
            directory / MODEL_FILE,
            int(params.get(contract.PARAM_INTRA_OP_THREADS, "0")),
            params.get(contract.PARAM_PRECISION, "f32"),
            int(params.get(contract.PARAM_STREAMS, "1")),
        )
