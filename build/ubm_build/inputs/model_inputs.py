"""Records -> model inputs: the one function that training, the export checks, the benchmarks
and Triton's ``preprocess`` use to turn event sequences into what the encoder and head read.

Copied into the model repository next to ``behaviour_text.py``, ``features.py`` and
``snapshot.py``; there its flat neighbours are imported, never the installed build package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer

try:  # in Triton's preprocess directory: the copies beside this file
    from behaviour_text import EventLike, encode_events
    from features import SESSION_FEATURE_NAMES, feature_matrix
    from snapshot import FILE as SNAPSHOT_FILE
    from snapshot import SNAPSHOT_FEATURE_NAMES, Snapshot, id_words, snapshot_features
except ImportError:  # in the source tree
    from ubm_build.inputs.behaviour_text import EventLike, encode_events
    from ubm_build.inputs.features import SESSION_FEATURE_NAMES, feature_matrix
    from ubm_build.inputs.snapshot import FILE as SNAPSHOT_FILE
    from ubm_build.inputs.snapshot import (
        SNAPSHOT_FEATURE_NAMES,
        Snapshot,
        id_words,
        snapshot_features,
    )

FEATURE_NAMES = (*SESSION_FEATURE_NAMES, *SNAPSHOT_FEATURE_NAMES)
"""Columns of `ModelInputs.features`: the record's own session features, then what the
snapshot knows about its items and categories."""


class ModelInputs(NamedTuple):
    """A batch as the model reads it."""

    ids: np.ndarray
    """int64 [n, length]: token ids of each record's behaviour text, padded with [PAD]."""
    mask: np.ndarray
    """int64 [n, length]: 1 for a token, 0 for padding."""
    features: np.ndarray
    """float32 [n, F]: `FEATURE_NAMES`."""
    truncated: np.ndarray
    """bool [n]: the record's text had more than `max_length` tokens and was cut."""


def model_inputs(
    tokenizer,
    event_sequences: Sequence[Sequence[EventLike]],
    max_length: int,
    snapshot: Snapshot,
    *,
    snapshot_words: bool,
) -> ModelInputs:
    """Token ids, attention mask and features of time-ordered event sequences.

    Args:
        tokenizer: the model's ``tokenizers.Tokenizer``.
        event_sequences: each record's events, oldest first.
        max_length: the token limit; texts are cut from the right (the oldest events).
        snapshot: the item and category knowledge the records are read with.
        snapshot_words: render that knowledge into the text too (`snapshot.id_words`).
    """
    words = id_words(snapshot, event_sequences) if snapshot_words else None
    ids, mask, truncated = encode_events(tokenizer, event_sequences, max_length, words)
    features = np.hstack(
        [feature_matrix(event_sequences), snapshot_features(snapshot, event_sequences)]
    )
    return ModelInputs(ids, mask, features, truncated)


def unseen_counts(features: np.ndarray) -> tuple[int, int]:
    """(records whose last item, records whose last category the snapshot never saw), from
    a batch's `ModelInputs.features`."""
    item = FEATURE_NAMES.index("last_item_unseen")
    category = FEATURE_NAMES.index("last_category_unseen")
    return int(features[:, item].sum()), int(features[:, category].sum())


@dataclass(frozen=True)
class RecordReader:
    """How a model reads records: its tokenizer and token limit, the snapshot, and whether the
    snapshot's words go into the text. Call it on event sequences for their `ModelInputs`."""

    tokenizer: Any
    """A ``tokenizers.Tokenizer``."""
    max_length: int
    snapshot: Snapshot
    snapshot_words: bool

    def __call__(self, event_sequences: Sequence[Sequence[EventLike]]) -> ModelInputs:
        return model_inputs(
            self.tokenizer,
            event_sequences,
            self.max_length,
            self.snapshot,
            snapshot_words=self.snapshot_words,
        )

    def at(self, snapshot: Snapshot) -> RecordReader:
        """The same reader with another snapshot."""
        return replace(self, snapshot=snapshot)

    @classmethod
    def from_directory(
        cls, directory: Path, *, max_length: int, snapshot_words: bool
    ) -> RecordReader:
        """The reader of a directory holding ``tokenizer.json`` and the snapshot file (a model
        directory, or ``preprocess``'s version directory in the repository)."""
        return cls(
            Tokenizer.from_file(str(directory / "tokenizer.json")),
            max_length,
            Snapshot.load(directory / SNAPSHOT_FILE),
            snapshot_words,
        )
