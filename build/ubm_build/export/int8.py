"""Static int8 quantisation of the encoder: scales fixed at build time from train-window records,
so that a record's score does not depend on what else is in its batch."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ubm import contract
from ubm_build.inputs.behaviour_text import EventLike
from ubm_build.inputs.model_inputs import RecordReader


class TokenCalibration(CalibrationDataReader):
    """Encoder feeds for `quantize_static`: one record per run, its real tokens and no padding.

    Padding positions are masked out of attention and pooling, so their activations must not
    widen the ranges that fix the int8 scales.
    """

    def __init__(
        self, reader: RecordReader, event_sequences: Sequence[Sequence[EventLike]]
    ) -> None:
        self._feeds: list[dict[str, np.ndarray]] = []
        for events in event_sequences:
            ids, mask, *_ = reader([events])
            n = int(mask.sum())
            self._feeds.append(
                {contract.INPUT_IDS: ids[:, :n], contract.ATTENTION_MASK: mask[:, :n]}
            )
        self._next: Iterator[dict] = iter(self._feeds)

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """Every record's feeds, in order."""
        return list(self._feeds)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (attention's are not)."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _fuse_int8_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite `quantize_static`'s QDQ graph the way ONNX Runtime runs it best, in place.

    - ``DequantizeLinear -> MatMul -> Add(bias)`` becomes one MatMulIntegerToFloat with the
      bias: ONNX Runtime folds the bias into dynamically quantised MatMuls but leaves a
      separate Add after QDQ ones.
    - A ``QuantizeLinear -> DequantizeLinear`` pair in front of any other op is dropped: the
      quantiser gives one to every reader of a tensor that a MatMul reads quantised, so the
      residual Add after a LayerNorm would read it rounded to 8 bits. It reads fp32 again.

    Returns how many MatMuls were fused.
    """
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def constant(name: str) -> onnx.TensorProto | None:
        """The initializer behind `name`: the exporter shares equal ones through Identity."""
        identity = made_by(name, "Identity")
        return weights.get(identity.input[0] if identity is not None else name)

    replaced: dict[str, onnx.NodeProto] = {}  # by the output of the node it replaces
    dropped: set[str] = set()  # outputs of the nodes it makes redundant
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        a = made_by(node.input[0], "DequantizeLinear")
        b = made_by(node.input[1], "DequantizeLinear")
        users = consumers.get(node.output[0], [])
        if a is None or b is None or len(a.input) != 3 or len(b.input) != 3:
            continue
        if b.input[0] not in weights or any(
            attr.name == "axis" and attr.i not in (1, -1) for attr in b.attribute
        ):
            continue  # MatMulIntegerToFloat takes a constant B, scaled per column
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = next(name for name in add.input if name != node.output[0])
        if len(getattr(constant(bias), "dims", ())) != 1:
            continue
        replaced[node.output[0]] = onnx.helper.make_node(
            "MatMulIntegerToFloat",
            # A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias
            [a.input[0], b.input[0], a.input[1], b.input[1], a.input[2], b.input[2], bias],
            [add.output[0]],
            name=f"{node.name}_int8",
            domain="com.microsoft",
        )
        dropped.add(add.output[0])
    nodes = [replaced.get(n.output[0], n) for n in graph.node if n.output[0] not in dropped]

    # Readers of an activation's Q -> DQ that are not fused MatMuls read the activation itself.
    fp32_of = {}
    for node in nodes:
        quantize = made_by(node.input[0], "QuantizeLinear") if node.input else None
        if node.op_type == "DequantizeLinear" and quantize is not None:
            fp32_of[node.output[0]] = quantize.input[0]
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = fp32_of.get(name, name)

    while True:  # drop the Q and DQ nodes nothing reads any more
        used = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        kept = [
            n
            for n in nodes
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.output[0] in used
        ]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


@contextmanager
def without_preprocessing_advice() -> Iterator[None]:
    """ONNX Runtime's quantisers log advice to run its pre-processing, whose symbolic shape
    inference fails on this graph; the variant checks judge the result instead."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8_static(
    fp32: Path,
    out: Path,
    calibration: TokenCalibration,
    *,
    fuse: bool = True,
    for_tensorrt: bool = False,
) -> Path:
    """Static int8 of the weight MatMuls (query, key, value, attention output, both FFN layers).

    Activations: uint8, one scale per tensor fixed from its min/max over `calibration` (the
    README compares it with the percentile and entropy methods). Weights: int8, one scale
    per output channel. Attention's activation-by-activation MatMuls, LayerNorm, GELU, softmax
    and the MatMul outputs stay fp32. `fuse` rewrites the graph with `_fuse_int8_matmuls`.

    `for_tensorrt`: the QDQ graph TensorRT reads as explicit quantisation instead, which takes
    signed int8 activations with symmetric scales (zero points 0) and no fused MatMuls.
    """
    calibration.rewind()
    with without_preprocessing_advice():
        quantize_static(
            fp32,
            out,
            calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],  # and only their tensors are calibrated
            nodes_to_quantize=weight_matmuls(onnx.load(fp32)),
            per_channel=True,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "DedicatedQDQPair": True,
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                **({"ActivationSymmetric": True, "WeightSymmetric": True} if for_tensorrt else {}),
            },
        )
    if fuse and not for_tensorrt:
        quantized = onnx.load(out)
        _fuse_int8_matmuls(quantized)
        onnx.save(quantized, out)
    return out
