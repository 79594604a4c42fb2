"""Records -> model inputs: the one function that training, the export checks, the benchmarks
and Triton's ``preprocess`` use to turn event sequences into what the encoder and head read.

Copied into the model repository next to ``behaviour_text.py`` and ``features.py``; there its
flat neighbours are imported, never the installed build package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

try:  # in Triton's preprocess directory: the copies beside this file
    from behaviour_text import EventLike, encode_events
    from features import feature_matrix
except ImportError:  # in the source tree
    from ubm_build.inputs.behaviour_text import EventLike, encode_events
    from ubm_build.inputs.features import feature_matrix


class ModelInputs(NamedTuple):
    """A batch as the model reads it."""

    ids: np.ndarray
    """int64 [n, length]: token ids of each record's behaviour text, padded with [PAD]."""
    mask: np.ndarray
    """int64 [n, length]: 1 for a token, 0 for padding."""
    features: np.ndarray
    """float32 [n, F]: session features (`features.FEATURE_NAMES`)."""
    truncated: np.ndarray
    """bool [n]: the record's text had more than `max_length` tokens and was cut."""


def model_inputs(
    tokenizer, event_sequences: Sequence[Sequence[EventLike]], max_length: int
) -> ModelInputs:
    """Token ids, attention mask and session features of time-ordered event sequences.

    Args:
        tokenizer: the model's ``tokenizers.Tokenizer``.
        event_sequences: each record's events, oldest first.
        max_length: the token limit; texts are cut from the right (the oldest events).
    """
    ids, mask, truncated = encode_events(tokenizer, event_sequences, max_length)
    return ModelInputs(ids, mask, feature_matrix(event_sequences), truncated)
