"""Triton python-backend model running an ONNX graph with ONNX Runtime on the CPU.

Serves both `encoder` and `head` (the build copies it to ``<model>/1/model.py`` next to
``model.onnx``). Triton has no ONNX Runtime backend in the pip-installed server, so this is how
the CPU target runs ONNX; on a full Triton container the build can emit the native
``onnxruntime_onnx`` platform instead.

All requests handed over by the dynamic batcher are stacked into one batch. Their token
sequences can differ in length (the inputs allow ragged batches): shorter ones are right-padded
with zeros, which is padding for both token ids and attention mask. The batch then runs in
slices of at most ``rows_per_run`` records (config parameter, 0 = all at once): on a CPU a
transformer is fastest on a few records at a time, whose activations stay in cache.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the batch axis, right-padding every other axis with zeros."""
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    width = np.max([a.shape for a in arrays], axis=0)[1:]
    return np.concatenate(
        [
            np.pad(a, [(0, 0), *((0, w - s) for w, s in zip(width, a.shape[1:], strict=True))])
            for a in arrays
        ]
    )


def run_in_slices(
    session: ort.InferenceSession, outputs: list[str], feeds: dict, rows_per_run: int
) -> list[np.ndarray]:
    """`session.run` over `feeds` in slices of `rows_per_run` records (0: one run)."""
    n = len(next(iter(feeds.values())))
    if rows_per_run <= 0 or n <= rows_per_run:
        return session.run(outputs, feeds)
    parts = [
        session.run(outputs, {k: v[start : start + rows_per_run] for k, v in feeds.items()})
        for start in range(0, n, rows_per_run)
    ]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """Open `model.onnx`; threads and rows per run come from the config's parameters."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        self.rows_per_run = int(params.get("rows_per_run", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        # Gather every request's inputs, run once, split the outputs back per request.
        feeds = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
            for r in requests
        ]
        sizes = [f[0].shape[0] for f in feeds]
        batch = {name: stack([f[i] for f in feeds]) for i, name in enumerate(self.inputs)}
        results = run_in_slices(self.session, self.outputs, batch, self.rows_per_run)
        bounds = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, bounds) for result in results]
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(name, parts[r])
                    for name, parts in zip(self.outputs, per_output, strict=True)
                ]
            )
            for r in range(len(requests))
        ]
