"""Triton python-backend model `preprocess`: JSON records -> token ids and session features.

The build copies this file to ``preprocess/1/model.py`` together with ``records.py``,
``behaviour_text.py`` and ``features.py`` (the exact modules training used), ``contract.py`` and
the model's ``tokenizer.json``; the python backend puts that directory on ``sys.path``.
"""

import json
from pathlib import Path

import contract
import numpy as np
from behaviour_text import encode_events
from features import feature_matrix
from records import RecordError, parse_record_json
from tokenizers import Tokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None


def events_of(rows: np.ndarray) -> list:
    """Each JSON record's events, sorted by time; RecordError names the bad row."""
    events = []
    for i, raw in enumerate(rows.reshape(-1)):
        try:
            events.append(parse_record_json(raw).events)
        except RecordError as e:
            raise RecordError(f"record {i}: {e}") from e
    return events


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """Load the tokenizer; `max_length` comes from the config's parameters."""
        config = json.loads(args["model_config"])
        self.max_length = int(config["parameters"]["max_length"]["string_value"])
        self.tokenizer = Tokenizer.from_file(str(Path(__file__).with_name("tokenizer.json")))

    def execute(self, requests: list) -> list:
        # One response per request, in order. A bad record fails its own request only.
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, contract.RECORDS).as_numpy()
            try:
                events = events_of(rows)
            except RecordError as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            ids, mask = encode_events(self.tokenizer, events, self.max_length)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(contract.INPUT_IDS, ids),
                        pb_utils.Tensor(contract.ATTENTION_MASK, mask),
                        pb_utils.Tensor(contract.FEATURES, feature_matrix(events)),
                    ]
                )
            )
        return responses
