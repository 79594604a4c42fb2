"""Warm-up samples for the three steps: Triton runs them as each model instance loads.

The first request to a freshly loaded ONNX Runtime session is slow (memory arenas, kernel
selection, lazy initialisation); with ``model_warmup`` in a model's config, Triton sends sample
requests through the model's own ``execute`` before it reports the model ready, so the first
real request after a start or a rollout finds it warm (the tokenizer of ``preprocess`` too).
Ensembles reject ``model_warmup``; ``python -m ubm_build.bench.first_request`` measures the
first request with and without.

The encoder and head validate their inputs (ids inside the vocabulary, a 0/1 mask attending at
least one token per row, finite floats), so zero or random data would fail the warm-up, and
with it the model's load. The samples are therefore a real record: of the first example
records, the one with the most tokens, tokenised as ``preprocess`` does and padded to
``max_length``, and its session features. The head's embedding is zeros (finite, of the right
width), since the encoder's real output is unknown when the repository is written.
``preprocess`` gets the same record as JSON, with the id `contract.WARMUP_RECORD_ID`, which
keeps it out of the metrics.

Triton reads each input of a sample from ``<model>/warmup/<file>``: the raw little-endian bytes
of *one* record. A sample of batch size ``B`` is ``B`` copies of that record, sent as ``B``
requests in one ``execute`` call, which the python model stacks into one batch, as it does a
dynamic batch.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ubm import contract
from ubm.records import parse_record_json
from ubm_build import paths
from ubm_build.inputs.model_inputs import RecordReader

if TYPE_CHECKING:
    from ubm_build.serving.repository import RepositorySpec

WARMUP_DIR = "warmup"
"""Triton's fixed folder for warm-up data, inside a model's directory."""
LARGE_BATCH = 32
"""The batch size of bulk scoring requests (the SDK's default), warmed up besides 1."""
CANDIDATE_RECORDS = 64
"""The example records searched for the one with the most tokens."""
FILE_SUFFIX = ".bin"


def batch_sizes(spec: RepositorySpec) -> list[int]:
    """1, the encoder's records per run and `LARGE_BATCH`, those the spec's batches allow."""
    sizes = {1, spec.tuning.encoder_rows_per_run, LARGE_BATCH}
    return sorted(size for size in sizes if 1 <= size <= spec.max_batch_size)


def _input(data_type: str, dims: list[int], name: str) -> dict:
    return {"data_type": data_type, "dims": dims, "input_data_file": name + FILE_SUFFIX}


def _samples(prefix: str, inputs: dict[str, dict], spec: RepositorySpec) -> list[dict]:
    return [
        {"name": f"{prefix}_batch_{size}", "batch_size": size, "count": 1, "inputs": inputs}
        for size in batch_sizes(spec)
    ]


def encoder_warmup(spec: RepositorySpec) -> list[dict]:
    """The encoder's ``model_warmup`` entries: a record of `spec.max_length` tokens."""
    dims = [spec.max_length]
    inputs = {
        name: _input("TYPE_INT64", dims, name)
        for name in (contract.INPUT_IDS, contract.ATTENTION_MASK)
    }
    return _samples("record", inputs, spec)


def head_warmup(spec: RepositorySpec) -> list[dict]:
    """The head's ``model_warmup`` entries: an embedding and a record's features."""
    inputs = {
        contract.EMBEDDING: _input("TYPE_FP32", [spec.hidden_size], contract.EMBEDDING),
        contract.FEATURES: _input("TYPE_FP32", [spec.n_features], contract.FEATURES),
    }
    return _samples("record", inputs, spec)


def preprocess_warmup(spec: RepositorySpec) -> list[dict]:
    """The ``model_warmup`` entries of ``preprocess``: one JSON record."""
    return _samples(
        "record", {contract.RECORDS: _input("TYPE_STRING", [1], contract.RECORDS)}, spec
    )


def model_warmup(model: str, spec: RepositorySpec) -> list[dict]:
    """`model`'s ``model_warmup`` entries.

    Raises:
        ValueError: `model` is no step of the ensemble.
    """
    if model == contract.PREPROCESS:
        return preprocess_warmup(spec)
    if model == contract.ENCODER:
        return encoder_warmup(spec)
    if model == contract.HEAD:
        return head_warmup(spec)
    raise ValueError(f"no warm-up samples for model {model!r}")


def sample_arrays(
    spec: RepositorySpec,
    reader: RecordReader,
    records_path: Path = paths.EXAMPLE_RECORDS,
    records: Sequence[dict] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """One record's inputs of each model, by model and tensor name, as the data files hold them.

    The record is one of `records`, if given, else of the JSONL file `records_path`.

    Raises:
        ValueError: no record, or the features are not `spec.n_features` wide.
    """
    if records is not None:
        lines = [json.dumps(record).encode() for record in records]
    else:
        lines = [line for line in records_path.read_bytes().splitlines() if line.strip()]
    events = [parse_record_json(line).events for line in lines[:CANDIDATE_RECORDS]]
    if not events:
        raise ValueError(f"{records_path} holds no records for the warm-up samples")
    inputs = reader(events)
    if inputs.features.shape[1] != spec.n_features:
        raise ValueError(
            f"the records have {inputs.features.shape[1]} features, the spec {spec.n_features}"
        )
    row = int(inputs.mask.sum(axis=1).argmax())
    record = {**json.loads(lines[row]), "id": contract.WARMUP_RECORD_ID}
    document = json.dumps(record).encode()
    padding = spec.max_length - inputs.ids.shape[1]
    pad_id = reader.tokenizer.token_to_id("[PAD]") or 0
    return {
        contract.PREPROCESS: {
            # Triton's BYTES serialisation: each element's length (4 bytes, little-endian) first.
            contract.RECORDS: np.frombuffer(
                struct.pack("<I", len(document)) + document, dtype=np.uint8
            ),
        },
        contract.ENCODER: {
            contract.INPUT_IDS: np.pad(inputs.ids[row], (0, padding), constant_values=pad_id),
            contract.ATTENTION_MASK: np.pad(inputs.mask[row], (0, padding)),
        },
        contract.HEAD: {
            contract.EMBEDDING: np.zeros(spec.hidden_size, dtype=np.float32),
            contract.FEATURES: inputs.features[row].astype(np.float32),
        },
    }


def write_warmup_data(
    repository_dir: Path,
    spec: RepositorySpec,
    reader: RecordReader,
    records_path: Path = paths.EXAMPLE_RECORDS,
    records: Sequence[dict] | None = None,
) -> None:
    """Write the warm-up data files under the three steps' directories in `repository_dir`
    (which must exist), from one of `records` or of `records_path`'s.

    Raises:
        ValueError: see `sample_arrays`.
    """
    for model, arrays in sample_arrays(spec, reader, records_path, records).items():
        directory = repository_dir / model / WARMUP_DIR
        directory.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
            (directory / (name + FILE_SUFFIX)).write_bytes(little_endian.tobytes())
