"""What every python-backend model that runs a graph shares, whatever engine runs it.

`onnx_model.py` (ONNX Runtime) and `openvino_model.py` (OpenVINO) each subclass `EngineModel`
with the one thing that differs, how the graph file is opened. The build copies the engine's file
to ``<model>/<version>/model.py``, next to this file, ``responses.py``, ``contract.py`` and the
graph. Triton has no ONNX Runtime or OpenVINO backend in the pip-installed server, so this is how
the CPU target runs them; a full Triton container can use its native backends instead
(``--target onnxruntime`` / ``openvino``).

Clients can call these models directly, so each request is checked on its own first: token ids
inside the vocabulary and no longer than ``max_length``, an attention mask of 0/1 with the ids'
shape and at least one attended token per row, finite float inputs of the configured width. A
bad request gets its own INVALID_ARG error, a cancelled one CANCELLED; neither is computed.

The remaining requests of the dynamic batch are stacked into one batch. Their token sequences
can differ in length (the inputs allow ragged batches): shorter ones are right-padded with zeros,
which is padding for both token ids and attention mask. The batch then runs in slices of at most
``rows_per_run`` records (config parameter, 0 = all at once): on a CPU a transformer is fastest
on a few records at a time, whose activations stay in cache. If the batched run fails anyway,
the requests run one by one, so only a request that fails on its own gets an error.

A model whose outputs include ``purchase_probability`` (the head) observes every probability it
returns in the histogram ``ubm_purchase_probability`` (buckets `PROBABILITY_BUCKETS`, labels:
the model's name and version), Triton's warm-up samples included.
"""

import json
from pathlib import Path
from typing import Protocol

import numpy as np

try:  # copied next to this file in the model repository
    import contract
    from responses import error_response, log_failure
except ImportError:  # imported from the source tree (tests)
    from ubm import contract
    from ubm_build.serving.triton_models.responses import (
        error_response,
        log_failure,
    )

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None

PROBABILITY_HISTOGRAM = "ubm_purchase_probability"
PROBABILITY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Upper bounds of the probability histogram's buckets (Prometheus adds +Inf); finer where
purchase probabilities mostly lie."""


class Session(Protocol):
    """An opened graph: ONNX Runtime's ``InferenceSession.run`` call shape, which the other
    engines' sessions copy."""

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class RequestError(ValueError):
    """A request's inputs are unfit for the model; the message is safe to send to the client."""


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
    session: Session, outputs: list[str], feeds: dict, rows_per_run: int
) -> list[np.ndarray]:
    """`session.run` over `feeds` in slices of `rows_per_run` records (0: one run). A session
    with ``run_many`` (OpenVINO's, which runs several slices at once on its streams) is handed
    all the slices in one call."""
    n = len(next(iter(feeds.values())))
    if rows_per_run <= 0 or n <= rows_per_run:
        return session.run(outputs, feeds)
    slices = [
        {k: v[start : start + rows_per_run] for k, v in feeds.items()}
        for start in range(0, n, rows_per_run)
    ]
    run_many = getattr(session, "run_many", None)
    parts = run_many(outputs, slices) if run_many else [session.run(outputs, f) for f in slices]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def check_tokens(ids: np.ndarray, mask: np.ndarray, vocab_size: int, max_length: int) -> None:
    """Raise RequestError unless `ids` and `mask` are a valid [n, length] token batch."""
    if ids.ndim != 2 or not 0 < ids.shape[1] <= max_length:
        raise RequestError(
            f"{contract.INPUT_IDS} must have shape [n, length] with 1 <= length <= {max_length},"
            f" got {list(ids.shape)}"
        )
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise RequestError(f"{contract.INPUT_IDS} must lie in [0, {vocab_size})")
    if mask.shape != ids.shape:
        raise RequestError(
            f"{contract.ATTENTION_MASK} must have the shape of {contract.INPUT_IDS}"
            f" {list(ids.shape)}, got {list(mask.shape)}"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise RequestError(f"{contract.ATTENTION_MASK} must hold only 0 and 1")
    if not mask.any(axis=1).all():
        raise RequestError(f"every row of {contract.ATTENTION_MASK} must attend to a token")


class EngineModel:
    """The python backend's model class, less `open_session`, which each engine's file adds."""

    def open_session(self, directory: Path, params: dict[str, str]) -> Session:
        """Open the graph in `directory` (the model version's), tuned by the config's
        `params`."""
        raise NotImplementedError

    def initialize(self, args: dict) -> None:
        """Open the graph; threads, rows per run and input limits come from the config."""
        config = json.loads(args["model_config"])
        self.name = config.get("name", "model")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.rows_per_run = int(params.get(contract.PARAM_ROWS_PER_RUN, "0"))
        directory = Path(args["model_repository"]) / args["model_version"]
        self.session = self.open_session(directory, params)
        self.inputs = [i["name"] for i in config["input"]]
        self.dims = {i["name"]: [int(d) for d in i["dims"]] for i in config["input"]}
        self.outputs = [o["name"] for o in config["output"]]
        self.tokens = contract.INPUT_IDS in self.inputs
        if self.tokens:
            if contract.PARAM_VOCAB_SIZE not in params or contract.PARAM_MAX_LENGTH not in params:
                raise ValueError(
                    f"a model with {contract.INPUT_IDS} needs the config parameters"
                    f" {contract.PARAM_VOCAB_SIZE} and {contract.PARAM_MAX_LENGTH}"
                )
            self.vocab_size = int(params[contract.PARAM_VOCAB_SIZE])
            self.max_length = int(params[contract.PARAM_MAX_LENGTH])
        self.probabilities = None
        self.metrics_failed = False
        has_metrics = getattr(pb_utils, "MetricFamily", None) is not None
        if has_metrics and contract.PURCHASE_PROBABILITY in self.outputs:
            # The family must outlive its metric, or the metric's operations fail.
            self.probability_family = pb_utils.MetricFamily(
                name=PROBABILITY_HISTOGRAM,
                description="Purchase probabilities returned.",
                kind=pb_utils.MetricFamily.HISTOGRAM,
            )
            self.probabilities = self.probability_family.Metric(
                labels={"model": self.name, "version": args["model_version"]},
                buckets=list(PROBABILITY_BUCKETS),
            )

    def execute(self, requests: list) -> list:
        """One response per request, in order; a request's failure is its own."""
        responses: list = [None] * len(requests)
        accepted: list[int] = []
        feeds: list[list[np.ndarray]] = []
        for r, request in enumerate(requests):
            if request.is_cancelled():
                responses[r] = error_response("request cancelled", pb_utils.TritonError.CANCELLED)
                continue
            try:
                feeds.append(self.checked_inputs(request))
                accepted.append(r)
            except RequestError as e:
                responses[r] = error_response(str(e), pb_utils.TritonError.INVALID_ARG)
            except Exception as e:
                responses[r] = self.internal_error("reading a request's inputs", e)
        if feeds:
            for r, response in zip(accepted, self.run_each_alone_on_failure(feeds), strict=True):
                responses[r] = response
        return responses

    def checked_inputs(self, request) -> list[np.ndarray]:
        """The request's inputs in config order; RequestError says what is wrong with them."""
        arrays = []
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input {name} is missing")
            array = tensor.as_numpy()
            dims = self.dims[name]
            if array.ndim != len(dims) + 1 or array.shape[0] == 0:
                raise RequestError(f"{name} must have {len(dims) + 1} dimensions and n >= 1 rows")
            if any(d != -1 and d != s for d, s in zip(dims, array.shape[1:], strict=True)):
                raise RequestError(f"{name} must have shape [n, {', '.join(map(str, dims))}]")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"{name} must be finite (no NaN or infinity)")
            arrays.append(array)
        if self.tokens:
            named = dict(zip(self.inputs, arrays, strict=True))
            check_tokens(
                named[contract.INPUT_IDS],
                named[contract.ATTENTION_MASK],
                self.vocab_size,
                self.max_length,
            )
        return arrays

    def run_each_alone_on_failure(self, feeds: list[list[np.ndarray]]) -> list:
        """Responses for `feeds` from one batched run or, if that fails, one run per request."""
        try:
            return self.run(feeds)
        except Exception as e:
            if len(feeds) == 1:
                return [self.internal_error("running a request", e)]
            log_failure(
                f"{self.name}: a batch of {len(feeds)} requests failed, running them one by one",
                e,
                warning=True,
            )
        responses = []
        for feed in feeds:
            try:
                responses.extend(self.run([feed]))
            except Exception as e:
                responses.append(self.internal_error("running a request", e))
        return responses

    def run(self, feeds: list[list[np.ndarray]]) -> list:
        """Stack the requests' inputs, run once, split the outputs back into one response each."""
        sizes = [f[0].shape[0] for f in feeds]
        batch = {name: stack([f[i] for f in feeds]) for i, name in enumerate(self.inputs)}
        results = run_in_slices(self.session, self.outputs, batch, self.rows_per_run)
        bounds = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, bounds) for result in results]
        responses = [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(name, parts[r])
                    for name, parts in zip(self.outputs, per_output, strict=True)
                ]
            )
            for r in range(len(feeds))
        ]
        if self.probabilities is not None:
            self.observe(results[self.outputs.index(contract.PURCHASE_PROBABILITY)])
        return responses

    def observe(self, probabilities: np.ndarray) -> None:
        """Add `probabilities` to the histogram; a failure is logged once, never raised."""
        try:
            for value in probabilities.reshape(-1).tolist():
                self.probabilities.observe(value)
        except Exception as e:
            if not self.metrics_failed:
                self.metrics_failed = True
                log_failure(f"{self.name}: observing probabilities failed (logged once)", e)

    def internal_error(self, doing: str, error: BaseException):
        """Log `error` (without its message); a short INTERNAL error response."""
        log_failure(f"{self.name}: failed {doing}", error)
        return error_response(
            f"{self.name} failed on this request (server error, see the server log)",
            pb_utils.TritonError.INTERNAL,
        )
