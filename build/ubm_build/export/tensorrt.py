"""TensorRT plans of the encoder, for NVIDIA GPUs: built from its ONNX graph, run with ONNX
Runtime's call shape.

TensorRT 10 and a CUDA GPU are needed only by `build_plan` and `TensorRTSession`; elsewhere
they raise `EngineUnavailable` with `unavailable_reason`. The profiles, settings, graph checks
and the `trtexec` line are plain Python.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ubm import contract

MIN_SEQUENCE = 16
"""The shortest sequence a plan takes: `tokenize` pads batches to multiples of 16 anyway."""
THROUGHPUT_OPT_BATCH = 64
LATENCY_MAX_BATCH = 8
DEFAULT_WORKSPACE_BYTES = 4 << 30
TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"
TOKEN_INPUTS = (contract.INPUT_IDS, contract.ATTENTION_MASK)
_WHERE = (
    f"build the plan in NVIDIA's Triton container ({TRITON_CONTAINER})"
    " or on a GPU machine with TensorRT 10"
)


class EngineUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here; the message says which, in one line."""


class PlanBuildError(RuntimeError):
    """TensorRT rejected the graph or the plan: its parser's errors, or a failed build."""


def unavailable_reason() -> str | None:
    """None if TensorRT imports and a CUDA GPU is visible, else why not, in one line."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # PyPI's stubs fail in other ways than ImportError
        what = "is not installed" if isinstance(e, ModuleNotFoundError) else "does not import"
        return " ".join(f"TensorRT {what} here (import tensorrt: {e}); {_WHERE}".split())
    import torch

    if not torch.cuda.is_available():
        return f"TensorRT imports but no CUDA GPU is visible here; {_WHERE}"
    return None


def _require_engine() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(reason)


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: the (batch, sequence) range of both token inputs, tuned at
    `opt`."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max) == 2:
            raise ValueError(f"shapes must be (batch, sequence), got {self}")
        for axis, name in enumerate(("batch", "sequence")):
            low, opt, high = self.min[axis], self.opt[axis], self.max[axis]
            if not 1 <= low <= opt <= high:
                raise ValueError(f"{name}: need 1 <= min <= opt <= max, got {low}, {opt}, {high}")

    def takes(self, batch: int, sequence: int) -> bool:
        """Whether a [batch, sequence] feed runs here, a short sequence padded up to `min`."""
        return self.min[0] <= batch <= self.max[0] and sequence <= self.max[1]


def profiles(
    max_batch_size: int, max_length: int, min_length: int = MIN_SEQUENCE
) -> tuple[ShapeProfile, ...]:
    """The plan's profiles, each tuned at `max_length` tokens (batches are padded to their
    longest record).

    0, throughput: batch 1..`max_batch_size`, tuned at `THROUGHPUT_OPT_BATCH`. Triton uses
    profile 0 unless the instance group lists others, so it takes every batch.
    1, latency: batch 1..`LATENCY_MAX_BATCH`, tuned for a single record (dropped if the same).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if min_length < 1 or min_length > max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    throughput = ShapeProfile(
        (1, min_length),
        (min(THROUGHPUT_OPT_BATCH, max_batch_size), max_length),
        (max_batch_size, max_length),
    )
    latency = ShapeProfile(
        (1, min_length), (1, max_length), (min(LATENCY_MAX_BATCH, max_batch_size), max_length)
    )
    return (throughput,) if latency == throughput else (throughput, latency)


def choose_profile(shapes: Sequence[ShapeProfile], batch: int, sequence: int) -> int:
    """The index of the profile that takes a [batch, sequence] feed, tuned nearest its batch."""
    fits = [i for i, shape in enumerate(shapes) if shape.takes(batch, sequence)]
    if not fits:
        raise ValueError(
            f"no optimization profile takes {batch} records of {sequence} tokens: {list(shapes)}"
        )
    return min(fits, key=lambda i: abs(shapes[i].opt[0] - batch))


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """How to build a plan: fp32 (no TF32) unless `fp16`; `int8` needs a QDQ graph and also
    enables fp16 for the layers it leaves unquantised."""

    max_length: int
    max_batch_size: int = contract.MAX_BATCH_SIZE
    min_length: int = MIN_SEQUENCE
    fp16: bool = False
    int8: bool = False
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES

    def __post_init__(self) -> None:
        self.shapes()
        if self.workspace_bytes < 1 << 20:
            raise ValueError(f"workspace_bytes must be at least 1 MiB, got {self.workspace_bytes}")

    def shapes(self) -> tuple[ShapeProfile, ...]:
        return profiles(self.max_batch_size, self.max_length, self.min_length)


def check_onnx(path: Path, *, int8: bool = False) -> None:
    """Raise unless `path` is an encoder graph TensorRT can build, `int8` an explicitly
    quantised one: FileNotFoundError, or ValueError saying what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {path}")
    graph = onnx.load(path, load_external_data=False).graph
    inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    if inputs != dict.fromkeys(TOKEN_INPUTS, 2) or contract.EMBEDDING not in {
        o.name for o in graph.output
    }:
        raise ValueError(
            f"{path} is no encoder graph: it needs inputs {list(TOKEN_INPUTS)} of rank 2 and"
            f" output {contract.EMBEDDING!r}, it has inputs {inputs}"
        )
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if int8 and not qdq:
        raise ValueError(
            f"{path} has no QuantizeLinear/DequantizeLinear nodes: an int8 plan takes its scales"
            " from a QDQ graph (TensorRT's explicit quantisation)"
        )
    constants = {i.name: i for i in graph.initializer} | {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    zero_points = {
        n.name: numpy_helper.to_array(constants[n.input[2]])
        for n in qdq
        if len(n.input) > 2 and n.input[2] in constants
    }
    asymmetric = [name for name, z in zero_points.items() if z.dtype != np.int8 or z.any()]
    if asymmetric:
        raise ValueError(
            f"{path}: TensorRT takes only symmetric int8 quantisation (int8 zero points of 0),"
            f" but {len(asymmetric)} Q/DQ nodes have other zero points, {asymmetric[0]!r} first;"
            " quantise activations as QInt8 with ActivationSymmetric"
        )


def _network_flags(trt) -> int:
    # TensorRT 10 has only explicit batch; 8.x must be asked for it.
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_plan(onnx_path: Path, plan_path: Path, settings: PlanSettings) -> Path:
    """Build the plan of the encoder graph `onnx_path` with `settings.shapes()` and write it.

    For `settings.int8`, pass the QDQ graph of `quantize_int8_static(..., fuse=False)`:
    TensorRT then uses the graph's scales (explicit quantisation) and needs no calibrator.

    Raises:
        EngineUnavailable: TensorRT or a CUDA GPU is missing here.
        FileNotFoundError, ValueError: see `check_onnx`.
        PlanBuildError: TensorRT's parser errors, all of them, or a failed build.
    """
    _require_engine()
    check_onnx(onnx_path, int8=settings.int8)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanBuildError(f"TensorRT cannot parse {onnx_path}: {errors or 'no error given'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.fp16 or settings.int8:
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # fp32 means fp32: no TF32 matmuls, which TensorRT allows by default from Ampere on
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    for shape in settings.shapes():
        profile = builder.create_optimization_profile()
        for name in TOKEN_INPUTS:
            profile.set_shape(name, shape.min, shape.opt, shape.max)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PlanBuildError(f"TensorRT failed to build a plan of {onnx_path}; see its log")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    partial = plan_path.with_name(plan_path.name + ".partial")
    partial.write_bytes(plan)
    partial.replace(plan_path)
    return plan_path


def trtexec_command(onnx_path: Path, plan_path: Path, settings: PlanSettings) -> str:
    """The `trtexec` line that builds a like plan in NVIDIA's container, with the throughput
    profile only (one profile per set of shape flags; Triton's default profile 0 anyway)."""
    shape = settings.shapes()[0]

    def shapes(dims: tuple[int, int]) -> str:
        return ",".join(f"{name}:{dims[0]}x{dims[1]}" for name in TOKEN_INPUTS)

    words = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        f"--minShapes={shapes(shape.min)}",
        f"--optShapes={shapes(shape.opt)}",
        f"--maxShapes={shapes(shape.max)}",
        f"--memPoolSize=workspace:{settings.workspace_bytes >> 20}",
    ]
    if settings.fp16 or settings.int8:
        words += ["--fp16", "--int8"] if settings.int8 else ["--fp16"]
    else:
        words.append("--noTF32")
    return shlex.join(words)


class TensorRTSession:
    """A plan run with ONNX Runtime's ``run`` call shape on the current CUDA device.

    Inputs are [batch, sequence] and cast to the plan's types (int64 or int32). Each run takes
    the profile `choose_profile` picks, or `profile` if given (one execution context each), and
    pads the sequence with zeros up to that profile's minimum: attention_mask zeros mark
    padding, so the embedding is unchanged.
    """

    def __init__(self, plan_path: Path, profile: int | None = None) -> None:
        _require_engine()
        import tensorrt as trt
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise PlanBuildError(f"TensorRT cannot load {plan_path}; see its log")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        count = engine.num_optimization_profiles
        if profile is not None and not 0 <= profile < count:
            raise ValueError(f"{plan_path} has profiles 0..{count - 1}, not {profile}")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self._device)
        self._shapes, self._contexts = [], []
        for index in range(count) if profile is None else [profile]:
            low, opt, high = engine.get_tensor_profile_shape(self._inputs[0], index)
            self._shapes.append(ShapeProfile(tuple(low), tuple(opt), tuple(high)))
            context = engine.create_execution_context()
            context.set_optimization_profile_async(index, self._stream.cuda_stream)
            self._contexts.append(context)
        self._stream.synchronize()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (None: all), as float32, for `feeds`."""
        wanted = list(output_names or self.output_names)
        if unknown := sorted(set(wanted) - set(self.output_names)):
            raise ValueError(f"no outputs {unknown}; the plan has {self.output_names}")
        if missing := sorted(set(self._inputs) - set(feeds)):
            raise ValueError(f"feeds lack {missing}")
        arrays = [np.asarray(feeds[name]) for name in self._inputs]
        if arrays[0].ndim != 2 or any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(
                f"feeds must be [batch, sequence] alike, got {[a.shape for a in arrays]}"
            )
        batch, sequence = arrays[0].shape
        chosen = choose_profile(self._shapes, batch, sequence)
        width = max(sequence, self._shapes[chosen].min[1])
        context, torch = self._contexts[chosen], self._torch
        with torch.cuda.stream(self._stream):
            held = []  # the device buffers must outlive the run
            for name, array in zip(self._inputs, arrays, strict=True):
                padded = np.zeros((batch, width), self._dtypes[name])
                padded[:, :sequence] = array
                held.append(torch.from_numpy(padded).to(self._device))
                if not context.set_input_shape(name, (batch, width)):
                    raise ValueError(f"the plan rejects {name} of shape {(batch, width)}")
                context.set_tensor_address(name, held[-1].data_ptr())
            outputs = {}
            for name in self.output_names:
                dtype = torch.from_numpy(np.empty(0, self._dtypes[name])).dtype
                shape = tuple(context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=dtype, device=self._device)
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the plan; see its log")
            self._stream.synchronize()
            return [outputs[name].float().cpu().numpy() for name in wanted]
