"""TensorRT plans: profiles, settings, graph checks and the trtexec line anywhere; `build_plan`
driven by a stand-in `tensorrt` module; the real build and run only where TensorRT and a CUDA GPU
are (`test_plan_matches_onnx_runtime`)."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ubm import contract
from ubm_build import cli, export
from ubm_build.export.tensorrt import (
    MIN_SEQUENCE,
    TRITON_CONTAINER,
    EngineUnavailable,
    PlanBuildError,
    PlanSettings,
    ShapeProfile,
    TensorRTSession,
    build_plan,
    check_onnx,
    choose_profile,
    profiles,
    trtexec_command,
    unavailable_reason,
)

MAX_LENGTH = 64
NO_TENSORRT = unavailable_reason()


def encoder_graph(path, zero_point: np.ndarray | None = None):
    """A graph with the encoder's inputs and output; QDQ nodes with `zero_point` if given."""
    tokens = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK)
    ]
    out = helper.make_tensor_value_info(contract.EMBEDDING, TensorProto.FLOAT, ["batch", 1])
    nodes = [helper.make_node("Cast", [contract.INPUT_IDS], ["x"], to=TensorProto.FLOAT)]
    constants = []
    if zero_point is not None:
        constants = [
            numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
            numpy_helper.from_array(zero_point, "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quantize"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["x2"], name="dequantize"),
        ]
    nodes.append(helper.make_node("ReduceMean", [nodes[-1].output[0]], [contract.EMBEDDING]))
    graph = helper.make_graph(nodes, "encoder", tokens, [out], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("max_batch", "max_length", "min_length"),
    [(256, 128, 16), (8, 64, 16), (1, 16, 16), (300, 512, 1), (32, 64, 32)],
)
def test_profiles_cover_every_batch_and_sequence(max_batch, max_length, min_length):
    shapes = profiles(max_batch, max_length, min_length)
    assert shapes[0].min == (1, min_length) and shapes[0].max == (max_batch, max_length)
    for shape in shapes:
        for axis in (0, 1):
            assert 1 <= shape.min[axis] <= shape.opt[axis] <= shape.max[axis]
        assert shape.min == (1, min_length) and shape.max[1] == max_length
    assert len(set(shapes)) == len(shapes)
    assert all(
        any(s.takes(b, n) for s in shapes)
        for b in range(1, max_batch + 1)
        for n in range(1, max_length + 1)
    )


def test_the_throughput_profile_comes_first_and_the_latency_one_tunes_single_records():
    throughput, latency = profiles(256, 128)
    assert throughput.opt == (64, 128) and latency.opt == (1, 128) and latency.max == (8, 128)
    assert profiles(256, 128) == PlanSettings(max_length=128).shapes()  # MAX_BATCH_SIZE 256
    assert len(profiles(1, 128)) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 128), "max_batch_size"),
        ((8, 8), "min_length <= max_length"),  # max_length under MIN_SEQUENCE
        ((8, 64, 65), "min_length <= max_length"),
        ((8, 64, 0), "min_length <= max_length"),
    ],
)
def test_profiles_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        profiles(*args)


def test_shape_profiles_and_settings_validate_themselves():
    with pytest.raises(ValueError, match="batch: need 1 <= min <= opt <= max"):
        ShapeProfile((1, 16), (9, 16), (8, 16))
    with pytest.raises(ValueError, match="sequence"):
        ShapeProfile((1, 16), (1, 8), (8, 64))
    with pytest.raises(ValueError, match="min_length"):
        PlanSettings(max_length=MIN_SEQUENCE - 1)
    with pytest.raises(ValueError, match="workspace_bytes"):
        PlanSettings(max_length=MAX_LENGTH, workspace_bytes=0)


def test_each_batch_runs_with_the_profile_tuned_nearest_it():
    shapes = profiles(256, 128)
    assert [choose_profile(shapes, b, 128) for b in (1, 4, 8, 9, 64, 256)] == [1, 1, 1, 0, 0, 0]
    assert choose_profile(shapes, 1, 3) == 1  # shorter than 16 tokens: padded
    with pytest.raises(ValueError, match="no optimization profile takes 257 records"):
        choose_profile(shapes, 257, 16)
    with pytest.raises(ValueError, match="of 129 tokens"):
        choose_profile(shapes, 1, 129)
    assert choose_profile(shapes[1:], 1, 16) == 0


@pytest.mark.parametrize(
    ("settings", "flags"),
    [
        (PlanSettings(max_length=128), ["--noTF32"]),
        (PlanSettings(max_length=128, fp16=True), ["--fp16"]),
        (PlanSettings(max_length=128, int8=True), ["--fp16", "--int8"]),
    ],
)
def test_trtexec_command_builds_the_throughput_profile(tmp_path, settings, flags):
    line = trtexec_command(tmp_path / "encoder.onnx", tmp_path / "model.plan", settings)
    words = line.split()
    assert words[:3] == [
        "trtexec",
        f"--onnx={tmp_path}/encoder.onnx",
        f"--saveEngine={tmp_path}/model.plan",
    ]
    assert "--minShapes=input_ids:1x16,attention_mask:1x16" in words
    assert "--optShapes=input_ids:64x128,attention_mask:64x128" in words
    assert "--maxShapes=input_ids:256x128,attention_mask:256x128" in words
    assert "--memPoolSize=workspace:4096" in words
    assert [w for w in words if w in ("--fp16", "--int8", "--noTF32")] == flags


def test_trtexec_command_quotes_paths(tmp_path):
    line = trtexec_command(
        tmp_path / "my encoder.onnx", tmp_path / "p.plan", PlanSettings(max_length=64)
    )
    assert f"'--onnx={tmp_path}/my encoder.onnx'" in line


def test_check_onnx_takes_encoder_graphs_and_symmetric_int8_ones(tmp_path):
    check_onnx(encoder_graph(tmp_path / "fp32.onnx"))
    check_onnx(encoder_graph(tmp_path / "qdq.onnx", np.array(0, np.int8)), int8=True)


def test_check_onnx_says_what_tensorrt_would_reject(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX graph"):
        check_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="explicit quantisation"):
        check_onnx(encoder_graph(tmp_path / "fp32.onnx"), int8=True)
    for zero_point in (np.array(128, np.uint8), np.array(3, np.int8)):  # quantize_static's uint8
        with pytest.raises(ValueError, match=r"symmetric int8 .* 'quantize' first"):
            check_onnx(encoder_graph(tmp_path / "asymmetric.onnx", zero_point), int8=True)
    head = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(head), tmp_path / "head.onnx")
    with pytest.raises(ValueError, match="no encoder graph"):
        check_onnx(tmp_path / "head.onnx")


class _BrokenStub:
    """A meta-path finder that fails `import tensorrt` the way a PyPI stub can."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt":
            raise RuntimeError("this is a stub\n  install TensorRT from NVIDIA")
        return None


@pytest.fixture
def broken_tensorrt(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenStub(), *sys.meta_path])


def test_the_reason_here_is_one_line():
    assert NO_TENSORRT is None or (NO_TENSORRT and "\n" not in NO_TENSORRT)


def test_unavailable_reason_says_why_in_one_line(monkeypatch, broken_tensorrt):
    reason = unavailable_reason()
    assert "\n" not in reason and "does not import" in reason and "this is a stub" in reason
    assert TRITON_CONTAINER in reason
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    assert unavailable_reason().startswith("TensorRT is not installed here (import tensorrt:")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU is visible" in unavailable_reason()


def test_build_plan_and_session_raise_engine_unavailable(tmp_path, broken_tensorrt):
    onnx_path = encoder_graph(tmp_path / "encoder.onnx")
    with pytest.raises(EngineUnavailable, match="does not import") as caught:
        build_plan(onnx_path, tmp_path / "model.plan", PlanSettings(max_length=MAX_LENGTH))
    assert str(caught.value) == unavailable_reason()
    assert list(tmp_path.iterdir()) == [onnx_path]
    with pytest.raises(EngineUnavailable, match="does not import"):
        TensorRTSession(tmp_path / "model.plan")


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a CUDA GPU are here")
def test_build_plan_and_session_raise_the_reason_here(tmp_path):
    onnx_path = encoder_graph(tmp_path / "encoder.onnx")
    with pytest.raises(EngineUnavailable) as caught:
        build_plan(onnx_path, tmp_path / "model.plan", PlanSettings(max_length=MAX_LENGTH))
    assert str(caught.value) == NO_TENSORRT
    assert not (tmp_path / "model.plan").exists()
    with pytest.raises(EngineUnavailable):
        TensorRTSession(tmp_path / "model.plan")


def stand_in_tensorrt(calls: list, *, parses: bool = True, builds: bool = True):
    """Just enough of TensorRT 10's Python API for `build_plan`, recording what it is asked."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.5.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8", TF32="tf32")

    class Recorder:
        def __getattr__(self, name):
            return lambda *args: calls.append((name, *args))

    class Builder:
        def __init__(self, logger): ...
        def create_network(self, flags):
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self):
            return Recorder()

        def create_optimization_profile(self):
            return Recorder()

        def build_serialized_network(self, network, config):
            return b"plan bytes" if builds else None

    class OnnxParser:
        num_errors = 0 if parses else 2

        def __init__(self, network, logger): ...
        def parse_from_file(self, path):
            return parses

        def get_error(self, index):
            return f"In node {index}: UNSUPPORTED_NODE"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def calls(monkeypatch) -> list:
    recorded: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(recorded))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return recorded


@pytest.mark.parametrize(("fp16", "int8"), [(False, False), (True, False), (False, True)])
def test_build_plan_asks_tensorrt_for_the_profiles_and_precisions(tmp_path, calls, fp16, int8):
    zero_point = np.array(0, np.int8) if int8 else None
    onnx_path = encoder_graph(tmp_path / "encoder.onnx", zero_point)
    settings = PlanSettings(max_length=MAX_LENGTH, max_batch_size=32, fp16=fp16, int8=int8)
    plan = build_plan(onnx_path, tmp_path / "out" / "model.plan", settings)
    assert plan.read_bytes() == b"plan bytes" and sorted(plan.parent.iterdir()) == [plan]
    assert ("create_network", 0) in calls
    assert ("set_memory_pool_limit", "workspace", 4 << 30) in calls
    flags = [call for call in calls if call[0] in ("set_flag", "clear_flag")]
    expected = {
        (False, False): [("clear_flag", "tf32")],
        (True, False): [("set_flag", "fp16")],
        (False, True): [("set_flag", "fp16"), ("set_flag", "int8")],
    }
    assert flags == expected[fp16, int8]
    shapes = [call[1:] for call in calls if call[0] == "set_shape"]
    assert shapes == [
        (name, shape.min, shape.opt, shape.max)
        for shape in profiles(32, MAX_LENGTH)
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK)
    ]
    assert len([call for call in calls if call[0] == "add_optimization_profile"]) == 2


def test_build_plan_reports_every_parser_error_and_writes_nothing(tmp_path, monkeypatch, calls):
    onnx_path = encoder_graph(tmp_path / "encoder.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(calls, parses=False))
    with pytest.raises(PlanBuildError, match="In node 0: UNSUPPORTED_NODE; In node 1"):
        build_plan(onnx_path, tmp_path / "model.plan", PlanSettings(max_length=MAX_LENGTH))
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(calls, builds=False))
    with pytest.raises(PlanBuildError, match="failed to build"):
        build_plan(onnx_path, tmp_path / "model.plan", PlanSettings(max_length=MAX_LENGTH))
    assert list(tmp_path.iterdir()) == [onnx_path]


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=NO_TENSORRT or "")
def test_plan_matches_onnx_runtime(tmp_path):
    from ubm_build.model.network import DEFAULT_BASE_MODEL, BehaviourModel

    model = BehaviourModel.tiny(DEFAULT_BASE_MODEL, MAX_LENGTH)
    onnx_path = export.export_encoder(model, tmp_path / "encoder.onnx")
    settings = PlanSettings(max_length=MAX_LENGTH, max_batch_size=32)
    session = TensorRTSession(build_plan(onnx_path, tmp_path / "model.plan", settings))
    reference = export.ort_session(onnx_path)
    rng = np.random.default_rng(0)
    vocab = model.encoder.bert.config.vocab_size
    for batch, sequence in [(1, 5), (3, 16), (8, 40), (9, 48), (32, MAX_LENGTH)]:
        lengths = rng.integers(1, sequence + 1, (batch, 1))
        feeds = {
            contract.INPUT_IDS: rng.integers(0, vocab, (batch, sequence)),
            contract.ATTENTION_MASK: (np.arange(sequence) < lengths).astype(np.int64),
        }
        [expected] = reference.run([contract.EMBEDDING], feeds)
        [embedding] = session.run([contract.EMBEDDING], feeds)
        assert embedding.dtype == np.float32 and embedding.shape == expected.shape
        np.testing.assert_allclose(embedding, expected, atol=1e-3)


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and a GPU are here")
def test_the_export_command_says_in_one_line_why_it_builds_no_plan(tmp_path):
    result = CliRunner().invoke(
        cli.main,
        ["export", "--engine", "tensorrt", "--fp16", "--model-dir", str(tmp_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {unavailable_reason()}"


def test_precision_flags_need_the_tensorrt_engine_and_model_does_not_build_plans(tmp_path):
    runner = CliRunner()
    flags = runner.invoke(cli.main, ["export", "--int8", "--model-dir", str(tmp_path)])
    assert flags.exit_code == 2 and "--engine tensorrt" in flags.output
    model = runner.invoke(cli.main, ["model", "--target", "tensorrt"])
    assert model.exit_code == 2 and "export --engine tensorrt" in model.output
