"""Triton python-backend model `preprocess`: JSON records -> token ids and session features.

The build copies this file to ``preprocess/<version>/model.py`` together with ``records.py``,
``model_inputs.py``, ``behaviour_text.py``, ``features.py``, ``snapshot.py``, ``drift.py`` and
``pseudonyms.py`` (the exact modules training used), ``contract.py``, ``responses.py``, the
model's ``tokenizer.json``, the item and category snapshot (``snapshot.npz``, loaded once at
`initialize`) and the drift reference files (``drift.REFERENCE_FILE``,
``drift.SEEN_IDS_FILE``); the python backend puts that directory on ``sys.path``. Nothing else
is imported: the repository serves without our packages installed.

A model built on pseudonymised data (its config's ``pseudonym_key_fingerprint``) reads the key
from the file ``UBM_PSEUDONYM_KEY_FILE`` names, refuses to load without it or with another key,
and replaces each record's item and category ids by their pseudonyms before anything else
reads them (ids that already are pseudonyms are kept).

Each request of a dynamic batch is answered on its own: a bad record fails its own request with
INVALID_ARG and ``record <i>: <why>`` (cut to `MAX_ERROR_CHARS`), an unexpected failure fails it
with a short INTERNAL error (the traceback goes to the server log only), and a request its client
cancelled is answered CANCELLED without being processed. The other requests are not affected.

Metrics (`PreprocessMetrics`, on Triton's metrics port, labelled with the model's name and
version; never with record contents):

- ``ubm_records_scored_total``: records of the requests that passed, sent on to the model;
- ``ubm_records_invalid_total{reason}``: the record that failed its request, by `reason_of`
  (a request fails at its first bad record, so each failed request counts one);
- ``ubm_records_unscored_total``: the other records of the failed requests (not checked, not
  scored);
- ``ubm_snapshot_unseen_total{kind}``: scored records whose last event's item
  (``kind="item"``) or category (``kind="category"``) the snapshot has never seen;
- drift, over the scored records: the counters ``ubm_events_total{type}``,
  ``ubm_events_unseen_item_total``, ``ubm_events_unseen_category_total`` and
  ``ubm_texts_truncated_total``, and for each quantity of ``drift.py`` a gauge
  ``ubm_drift_<quantity>`` with ``source="served"`` (everything scored since the model loaded,
  over all instances) and ``source="reference"`` (the training data, set once at load).

Without the reference files the model serves and exports the counters, but neither the unseen
counters nor any unseen or reference gauge (one warning in the log). Cancelled requests and
server errors count nowhere here (Triton's own ``nv_inference_request_failure`` counts them).
"""

import dataclasses
import json
from pathlib import Path

import contract
import drift
import numpy as np
import pseudonyms
from model_inputs import ModelInputs, RecordReader, unseen_counts
from records import ERROR_FIELDS, RecordError, parse_record_json
from responses import error_response, log_failure

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests)
    pb_utils = None

UNPROCESSABLE = "unprocessable"
"""Reason of a record that passes the schema but that the feature or tokenizer code rejects."""
NON_FINITE_FEATURES = "non_finite_features"
"""Reason of a record whose session features come out NaN or infinite."""
OTHER = "other"
INVALID_REASONS = (*ERROR_FIELDS, UNPROCESSABLE, NON_FINITE_FEATURES, OTHER)
"""Every value of the ``reason`` label of ``ubm_records_invalid_total``."""


class UnreadableRecord(RecordError):
    """A record that passes the schema but that the model cannot read; `reason` says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, field="events")
        self.reason = reason


def reason_of(error: RecordError) -> str:
    """The ``reason`` label of a bad record: our own reason, else the error's field.

    Only the values of `INVALID_REASONS` are used (anything else is `OTHER`), so a label can
    never carry what a record holds.
    """
    reason = getattr(error, "reason", None) or getattr(error, "field", None) or OTHER
    return reason if reason in INVALID_REASONS else OTHER


def records_of(rows: np.ndarray) -> list:
    """Each JSON record, parsed (events sorted by time); RecordError names the bad row."""
    records = []
    for i, raw in enumerate(rows.reshape(-1)):
        try:
            records.append(parse_record_json(raw))
        except RecordError as e:
            raise e.at_record(i) from e
    return records


def pseudonym_key(expected_fingerprint: str) -> bytes:
    """The key in ``UBM_PSEUDONYM_KEY_FILE``; ValueError unless it has `expected_fingerprint`."""
    key = pseudonyms.key_from_env()
    if key is None:
        raise ValueError(
            "this model was built on pseudonymised ids: give the server its key file"
            f" (ubm-serve serve --pseudonym-key-file, or {pseudonyms.KEY_FILE_ENV})"
        )
    if pseudonyms.fingerprint(key) != expected_fingerprint:
        raise ValueError(
            f"the pseudonym key in {pseudonyms.KEY_FILE_ENV} is not the one this model was built"
            f" with (fingerprint {pseudonyms.fingerprint(key)}, expected {expected_fingerprint})"
        )
    return key


def pseudonymised(key: bytes, events: tuple) -> tuple:
    """`events` with their item and category ids replaced by their pseudonyms."""
    return tuple(
        dataclasses.replace(
            event,
            item=pseudonyms.pseudonym(key, "item", event.item),
            category=pseudonyms.pseudonym(key, "category", event.category),
        )
        for event in events
    )


def inputs_of(reader: RecordReader, events: list) -> ModelInputs:
    """`reader`'s inputs of the records' events; UnreadableRecord names a record that breaks
    it.

    A record can pass the schema and still hold what the feature or tokenizer code cannot
    take. When the request fails, each record is tried alone: a failure that only some records
    have is theirs (UnreadableRecord); one that every record shares is the server's (re-raised).
    """
    try:
        inputs = reader(events)
    except Exception:
        if len(events) > 1:
            failures = []
            for i, record_events in enumerate(events):
                try:
                    reader([record_events])
                except Exception as e:
                    failures.append((i, type(e).__name__))
            if failures and len(failures) < len(events):
                i, name = failures[0]
                raise UnreadableRecord(
                    f"record {i}: its events cannot be processed ({name})", UNPROCESSABLE
                ) from None
        raise
    finite = np.isfinite(inputs.features).all(axis=1)
    if not finite.all():
        raise UnreadableRecord(
            f"record {int(np.argmin(finite))}: its events give non-finite features",
            NON_FINITE_FEATURES,
        )
    return inputs


def load_reference(directory: Path, max_length: int):
    """The drift reference beside this file, or None (logged) if it is missing or unfit."""
    try:
        reference = drift.read_reference(directory)
    except drift.DriftReferenceError as e:
        pb_utils.Logger.log_error(f"preprocess: {e}; serving without drift reference")
        return None
    if reference is None:
        pb_utils.Logger.log_warn(
            f"preprocess: no drift reference ({drift.REFERENCE_FILE}) in {directory}; the"
            " drift counters are exported, the reference and unseen-id metrics are not"
        )
    elif reference.max_length != max_length:
        pb_utils.Logger.log_error(
            f"preprocess: the drift reference is for max_length {reference.max_length}, the"
            f" model's is {max_length}; serving without drift reference"
        )
        return None
    return reference


class PreprocessMetrics:
    """The ``ubm_*`` metrics of `preprocess` (see the module docstring), for one instance.

    Every instance of the model version adds to the same counters (Triton keeps one metric per
    name and labels). With `shared` (several instances) the served gauges are therefore
    computed from the counters' values, read back from the server; with one instance, from
    this instance's own totals, which are the same and cost no round trips.
    """

    def __init__(self, labels: dict[str, str], reference, *, shared: bool) -> None:
        self.reference = reference
        self.shared = shared
        self.local = drift.DriftCounts()
        self.families: dict = {}
        counter = _maker(pb_utils.MetricFamily.COUNTER, labels, self.families)
        gauge = _maker(pb_utils.MetricFamily.GAUGE, labels, self.families)
        self.scored = counter("ubm_records_scored_total", "Records that passed preprocess.")
        self.invalid = {
            reason: counter(
                "ubm_records_invalid_total",
                "Records that failed their request, by reason.",
                reason=reason,
            )
            for reason in INVALID_REASONS
        }
        self.unscored = counter(
            "ubm_records_unscored_total",
            "Other records of requests failed by an invalid record (not scored).",
        )
        self.events = {
            kind: counter("ubm_events_total", "Events of scored records, by type.", type=kind)
            for kind in drift.EVENT_TYPES
        }
        self.truncated = counter(
            "ubm_texts_truncated_total",
            "Scored records whose behaviour text exceeds the token limit.",
        )
        self.snapshot_unseen = {
            kind: counter(
                "ubm_snapshot_unseen_total",
                "Scored records whose last item or category the snapshot never saw.",
                kind=kind,
            )
            for kind in ("item", "category")
        }
        self.unseen_items = self.unseen_categories = None
        if reference is not None:
            self.unseen_items = counter(
                "ubm_events_unseen_item_total", "Events of scored records on an unseen item."
            )
            self.unseen_categories = counter(
                "ubm_events_unseen_category_total",
                "Events of scored records in an unseen category.",
            )
        sources = ("served",) if reference is None else ("served", "reference")
        self.gauges = {
            source: _drift_gauges(gauge, source, with_unseen=reference is not None)
            for source in sources
        }
        if reference is not None:
            _set_drift_gauges(self.gauges["reference"], reference.values)

    def record_scored(self, counts, unseen: tuple[int, int]) -> None:
        """Count a passed request's records (`drift.DriftCounts`, and (item, category) records
        unseen by the snapshot) and update the served gauges."""
        _increment(self.scored, counts.records)
        for kind, n in zip(("item", "category"), unseen, strict=True):
            _increment(self.snapshot_unseen[kind], n)
        for kind, n in counts.events_by_type.items():
            _increment(self.events[kind], n)
        _increment(self.truncated, counts.truncated)
        if self.reference is not None:
            _increment(self.unseen_items, counts.unseen_items)
            _increment(self.unseen_categories, counts.unseen_categories)
        self.local = self.local + counts
        totals = self.shared_totals() if self.shared else self.local
        _set_drift_gauges(self.gauges["served"], drift.drift_values(totals))

    def record_invalid(self, reason: str, records: int) -> None:
        """Count a request failed by one invalid record of `records`."""
        self.invalid[reason].increment(1)
        _increment(self.unscored, records - 1)

    def shared_totals(self):
        """The drift counts of every record scored by this model version (all instances)."""
        by_type = {kind: int(metric.value()) for kind, metric in self.events.items()}
        with_reference = self.reference is not None
        return drift.DriftCounts(
            records=int(self.scored.value()),
            events=sum(by_type.values()),
            events_by_type=by_type,
            unseen_items=int(self.unseen_items.value()) if with_reference else 0,
            unseen_categories=int(self.unseen_categories.value()) if with_reference else 0,
            truncated=int(self.truncated.value()),
        )


def _maker(kind, labels: dict[str, str], families: dict):
    """A function making metrics of `kind` with `labels` plus its own.

    Their families are kept in `families`: a metric fails once its family is garbage.
    """

    def make(name: str, description: str, **more: str):
        if name not in families:
            families[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        return families[name].Metric(labels={**labels, **more})

    return make


def _increment(metric, n: int) -> None:
    if n:
        metric.increment(float(n))


def _drift_gauges(gauge, source: str, with_unseen: bool) -> dict:
    """The drift gauges of one source, keyed like `drift.DriftValues.to_dict`."""
    gauges = {
        "events_per_record": gauge(
            "ubm_drift_events_per_record", "Events per record.", source=source
        ),
        "event_type_share": {
            kind: gauge(
                "ubm_drift_event_type_share",
                "Share of each event type among events.",
                source=source,
                type=kind,
            )
            for kind in drift.EVENT_TYPES
        },
        "truncated_share": gauge(
            "ubm_drift_truncated_share",
            "Share of records whose behaviour text exceeds the token limit.",
            source=source,
        ),
    }
    if with_unseen:
        gauges["unseen_item_share"] = gauge(
            "ubm_drift_unseen_item_share",
            "Share of events whose item training never saw.",
            source=source,
        )
        gauges["unseen_category_share"] = gauge(
            "ubm_drift_unseen_category_share",
            "Share of events whose category training never saw.",
            source=source,
        )
    return gauges


def _set_drift_gauges(gauges: dict, values) -> None:
    for name, value in values.to_dict().items():
        if name not in gauges:
            continue
        if isinstance(value, dict):
            for key, share in value.items():
                gauges[name][key].set(share)
        else:
            gauges[name].set(value)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """Load the tokenizer, the snapshot and the drift reference; the token limit and the
        snapshot words come from the config.

        A python backend without custom metrics (``pb_utils.MetricFamily``) serves without
        them.
        """
        config = json.loads(args["model_config"])
        parameters = config["parameters"]
        self.max_length = int(parameters[contract.PARAM_MAX_LENGTH]["string_value"])
        words = parameters.get(contract.PARAM_SNAPSHOT_WORDS, {}).get("string_value", "0")
        self.reader = RecordReader.from_directory(
            Path(__file__).parent, max_length=self.max_length, snapshot_words=words == "1"
        )
        expected = parameters.get(contract.PARAM_PSEUDONYM_KEY, {}).get("string_value")
        self.key = pseudonym_key(expected) if expected else None
        self.metrics = None
        self.metrics_failed = False
        if getattr(pb_utils, "MetricFamily", None) is not None:
            reference = load_reference(Path(__file__).parent, self.max_length)
            labels = {"model": config.get("name", "preprocess"), "version": args["model_version"]}
            instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", []))
            self.metrics = PreprocessMetrics(labels, reference, shared=instances > 1)

    def execute(self, requests: list) -> list:
        """One response per request, in order; a request's failure is its own."""
        return [self.answer(request) for request in requests]

    def answer(self, request):
        """The response to one request: its outputs, or its own error."""
        if request.is_cancelled():
            return error_response("request cancelled", pb_utils.TritonError.CANCELLED)
        try:
            rows = pb_utils.get_input_tensor_by_name(request, contract.RECORDS).as_numpy()
            records = records_of(rows)
            events = [record.events for record in records]
            if self.key is not None:
                events = [pseudonymised(self.key, record_events) for record_events in events]
            inputs = inputs_of(self.reader, events)
        except RecordError as e:
            reason, records = reason_of(e), rows.size
            self.count(lambda m: m.record_invalid(reason, records))
            return error_response(str(e), pb_utils.TritonError.INVALID_ARG)
        except Exception as e:
            log_failure("preprocess failed on a request", e)
            return error_response(
                "preprocess failed on this request (server error, see the server log)",
                pb_utils.TritonError.INTERNAL,
            )
        if any(record.id != contract.WARMUP_RECORD_ID for record in records):
            unseen = unseen_counts(inputs.features)
            self.count(lambda m: m.record_scored(self.drift_counts(events, inputs), unseen))
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(contract.INPUT_IDS, inputs.ids),
                pb_utils.Tensor(contract.ATTENTION_MASK, inputs.mask),
                pb_utils.Tensor(contract.FEATURES, inputs.features),
            ]
        )

    def drift_counts(self, events: list, inputs: ModelInputs):
        """The drift counts of a passed request's records."""
        reference = self.metrics.reference
        return drift.count_records(events, inputs.truncated, reference.seen if reference else None)

    def count(self, update) -> None:
        """Apply `update` to the metrics, if any; a failure is logged once, never raised."""
        if self.metrics is None:
            return
        try:
            update(self.metrics)
        except Exception as e:
            if not self.metrics_failed:
                self.metrics_failed = True
                log_failure("preprocess: updating metrics failed (logged once)", e)
