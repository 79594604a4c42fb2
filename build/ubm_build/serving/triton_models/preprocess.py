"""Triton python-backend model `preprocess`: JSON records -> token ids and session features.

The build copies this file to ``preprocess/1/model.py`` together with ``records.py``,
``model_inputs.py``, ``behaviour_text.py`` and ``features.py`` (the exact modules training used),
``contract.py`` and the model's ``tokenizer.json``; the python backend puts that directory on
``sys.path``.

Each request of a dynamic batch is answered on its own: a bad record fails its own request with
INVALID_ARG and ``record <i>: <why>`` (cut to `MAX_ERROR_CHARS`), an unexpected failure fails it
with a short INTERNAL error (the traceback goes to the server log only), and a request its client
cancelled is answered CANCELLED without being processed. The other requests are not affected.
"""

import json
import traceback
from pathlib import Path

import contract
import numpy as np
from model_inputs import ModelInputs, model_inputs
from records import RecordError, parse_record_json
from tokenizers import Tokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None

MAX_ERROR_CHARS = 512
"""Error messages are cut to this many characters. A record can hold megabytes; echoed in full,
it would exceed gRPC's metadata limit and reach the client as RESOURCE_EXHAUSTED."""


def short(message: str) -> str:
    """`message`, cut to `MAX_ERROR_CHARS` characters."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return message[: MAX_ERROR_CHARS - 3] + "..."


def events_of(rows: np.ndarray) -> list:
    """Each JSON record's events, sorted by time; RecordError names the bad row."""
    events = []
    for i, raw in enumerate(rows.reshape(-1)):
        try:
            events.append(parse_record_json(raw).events)
        except RecordError as e:
            raise RecordError(f"record {i}: {e}") from e
    return events


def inputs_of(tokenizer, events: list, max_length: int) -> ModelInputs:
    """`model_inputs` of the records' events; RecordError names a record that breaks it.

    A record can pass the schema and still hold what the feature or tokenizer code cannot
    take. When the request fails, each record is tried alone: a failure that only some records
    have is theirs (RecordError); one that every record shares is the server's (re-raised).
    """
    try:
        inputs = model_inputs(tokenizer, events, max_length)
    except Exception:
        if len(events) > 1:
            failures = []
            for i, record_events in enumerate(events):
                try:
                    model_inputs(tokenizer, [record_events], max_length)
                except Exception as e:
                    failures.append((i, type(e).__name__))
            if failures and len(failures) < len(events):
                i, name = failures[0]
                raise RecordError(f"record {i}: its events cannot be processed ({name})") from None
        raise
    finite = np.isfinite(inputs.features).all(axis=1)
    if not finite.all():
        raise RecordError(f"record {int(np.argmin(finite))}: its events give non-finite features")
    return inputs


def error_response(message: str, code: int):
    """An InferenceResponse that fails its request with `message` (cut) and `code`."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(short(message), code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """Load the tokenizer; `max_length` comes from the config's parameters."""
        config = json.loads(args["model_config"])
        self.max_length = int(config["parameters"][contract.PARAM_MAX_LENGTH]["string_value"])
        self.tokenizer = Tokenizer.from_file(str(Path(__file__).with_name("tokenizer.json")))

    def execute(self, requests: list) -> list:
        """One response per request, in order; a request's failure is its own."""
        return [self.answer(request) for request in requests]

    def answer(self, request):
        """The response to one request: its outputs, or its own error."""
        if request.is_cancelled():
            return error_response("request cancelled", pb_utils.TritonError.CANCELLED)
        try:
            rows = pb_utils.get_input_tensor_by_name(request, contract.RECORDS).as_numpy()
            inputs = inputs_of(self.tokenizer, events_of(rows), self.max_length)
        except RecordError as e:
            return error_response(str(e), pb_utils.TritonError.INVALID_ARG)
        except Exception:
            pb_utils.Logger.log_error(f"preprocess failed on a request:\n{traceback.format_exc()}")
            return error_response(
                "preprocess failed on this request (server error, see the server log)",
                pb_utils.TritonError.INTERNAL,
            )
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(contract.INPUT_IDS, inputs.ids),
                pb_utils.Tensor(contract.ATTENTION_MASK, inputs.mask),
                pb_utils.Tensor(contract.FEATURES, inputs.features),
            ]
        )
