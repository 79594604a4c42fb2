"""Triton python-backend model `preprocess`: JSON records -> behaviour text -> token ids.

The build copies this file to ``preprocess/1/model.py`` together with ``records.py``,
``behaviour_text.py`` (the exact modules training used), ``contract.py`` and the model's
``tokenizer.json``; the python backend puts that directory on ``sys.path``.
"""

import json
from pathlib import Path

import contract
import numpy as np
from behaviour_text import behaviour_text, tokenize
from records import RecordError, parse_record_json
from tokenizers import Tokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None


def texts_of(rows: np.ndarray) -> list[str]:
    """Behaviour texts for a column of JSON records; RecordError names the bad row."""
    texts = []
    for i, raw in enumerate(rows.reshape(-1)):
        try:
            texts.append(behaviour_text(parse_record_json(raw).events))
        except RecordError as e:
            raise RecordError(f"record {i}: {e}") from e
    return texts


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
                texts = texts_of(rows)
            except RecordError as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            ids, mask = tokenize(self.tokenizer, texts, self.max_length)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(contract.INPUT_IDS, ids),
                        pb_utils.Tensor(contract.ATTENTION_MASK, mask),
                    ]
                )
            )
        return responses
