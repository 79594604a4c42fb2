"""A fake `triton_python_backend_utils`, and the python-backend models of a written repository
loaded against it: `initialize` and `execute` run for real, in-process.

Used by tests/unit/test_triton_models.py (`preprocess`) and tests/integration/test_onnx_models.py
(`encoder`, `head`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import orjson
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from ubm import contract
from ubm_build.serving.triton_models import responses


class FakeTensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self._name = name
        self._data = data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data


class FakeTritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error

    def __getitem__(self, name: str) -> np.ndarray:
        assert self.error is None, self.error.message()
        return self.outputs[name]


class FakeRequest:
    def __init__(self, cancelled: bool = False, **inputs: np.ndarray) -> None:
        self._inputs = [FakeTensor(name, data) for name, data in inputs.items()]
        self._cancelled = cancelled

    def inputs(self) -> list[FakeTensor]:
        return self._inputs

    def is_cancelled(self) -> bool:
        return self._cancelled


class FakeLogger:
    messages: ClassVar[list[str]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.messages.append(message)

    log_warn = log_error = log_verbose = log_info

    @classmethod
    def fresh(cls) -> list[str]:
        """Forget the messages logged so far; returns the list that new ones go to."""
        cls.messages = []
        return cls.messages


def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


FAKE_PB_UTILS = SimpleNamespace(
    Tensor=FakeTensor,
    TritonError=FakeTritonError,
    InferenceResponse=FakeResponse,
    Logger=FakeLogger,
    get_input_tensor_by_name=get_input_tensor_by_name,
)
FLAT_MODULES = (
    "contract",
    "engine_model",
    "records",
    "model_inputs",
    "behaviour_text",
    "features",
    "snapshot",
    "drift",
    "responses",
)
"""Modules the served model files import from their own directory."""


def load_served(repository: Path, model: str) -> Any:
    """`<model>/1/model.py` of `repository`, initialized, with the fake `pb_utils`."""
    directory = repository / model / "1"
    saved = {name: sys.modules.pop(name) for name in FLAT_MODULES if name in sys.modules}
    sys.path.insert(0, str(directory))
    try:
        spec = importlib.util.spec_from_file_location(f"served_{model}", directory / "model.py")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in FLAT_MODULES:  # the flat neighbours that talk to Triton, too
            if hasattr(sys.modules.get(name), "pb_utils"):
                sys.modules[name].pb_utils = FAKE_PB_UTILS
    finally:
        sys.path.remove(str(directory))
        for name in FLAT_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    module.pb_utils = FAKE_PB_UTILS
    pbtxt = (repository / model / "config.pbtxt").read_text()
    config = json_format.MessageToDict(
        text_format.Parse(pbtxt, model_config_pb2.ModelConfig()),
        preserving_proto_field_name=True,
    )
    instance = module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(repository / model),
            "model_version": "1",
        }
    )
    instance.module = module
    return instance


def records_request(*records: dict | bytes, cancelled: bool = False) -> FakeRequest:
    rows = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    return FakeRequest(cancelled, **{contract.RECORDS: np.array(rows, dtype=object).reshape(-1, 1)})


def with_event(record: dict, **changes: Any) -> dict:
    """`record` with its first event changed."""
    first, *rest = record["events"]
    return {**record, "events": [{**first, **changes}, *rest]}


def assert_error(response: FakeResponse, code: int, *fragments: str) -> str:
    assert response.error is not None, "expected an error response"
    message = response.error.message()
    assert response.error.code() == code, message
    assert len(message) <= responses.MAX_ERROR_CHARS, f"a message of {len(message)} characters"
    for fragment in fragments:
        assert fragment in message
    return message
