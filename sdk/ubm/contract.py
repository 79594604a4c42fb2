"""Names shared by the build, the SDK and the tests: models, tensors, defaults.

The model repository is generated from these names, and the SDK calls it by them, so the two
cannot drift apart.
"""

ENSEMBLE = "ubm"
PREPROCESS = "preprocess"
ENCODER = "encoder"
HEAD = "head"

RECORDS = "records"
"""Ensemble input: BYTES [batch, 1], one JSON record per row."""
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
FEATURES = "features"
"""Numeric session features (FP32 [batch, F]) from preprocess to the head."""
EMBEDDING = "embedding"
"""Ensemble output: FP32 [batch, hidden], the user representation."""
HEAD_EMBEDDING = "embedding_out"
"""The head's copy of its input embedding, which the ensemble returns as `EMBEDDING`.

The ensemble takes its `EMBEDDING` output from the head, not from the encoder: Triton 2.51
prunes an ensemble tensor that feeds a later step when a client does not request it as an
output, and then fails the request ("unexpected deadlock")."""
PURCHASE_PROBABILITY = "purchase_probability"
"""Ensemble output: FP32 [batch, 1], P(the user buys before the current session ends)."""
SEGMENT = "segment"
"""Ensemble output: INT32 [batch, 1], the user's segment: the nearest of the head's k-means
centroids (``ubm-build segments``), 0 to k - 1."""
SEGMENT_DISTANCE = "segment_distance"
"""Ensemble output: FP32 [batch, 1], the Euclidean distance to that centroid, in the head's
principal components of the embedding: how typical the user is of the segment."""

# Parameters of the generated model configs: `ubm_build.serving.repository` writes them, and the
# python-backend models, next to which this module is copied, read them.
PARAM_MAX_LENGTH = "max_length"
"""preprocess and encoder: the longest token sequence."""
PARAM_SNAPSHOT_WORDS = "snapshot_words"
"""preprocess: "1" if the snapshot's words are rendered into the behaviour text, else "0"."""
PARAM_PSEUDONYM_KEY = "pseudonym_key_fingerprint"
"""preprocess: the `ubm.pseudonyms.fingerprint` of the key the model's ids were pseudonymised
with; the model then pseudonymises every record's ids and will not load without that key."""
PARAM_VOCAB_SIZE = "vocab_size"
"""encoder: token ids must lie in [0, vocab_size)."""
PARAM_ROWS_PER_RUN = "rows_per_run"
"""encoder and head: records per engine run (0: the whole batch at once)."""
PARAM_INTRA_OP_THREADS = "intra_op_threads"
"""encoder and head: the engine's threads per run (0: every core)."""
PARAM_PRECISION = "precision"
"""encoder: the inference precision ("f32" or "bf16" on OpenVINO, "fp32" or "fp16" on
PyTorch)."""
PARAM_STREAMS = "streams"
"""encoder on OpenVINO: slices of a batch run at once (OpenVINO's streams)."""
PARAM_DEVICE = "device"
"""encoder on PyTorch: "cuda" (an NVIDIA GPU, the instance's) or "cpu"."""

WARMUP_RECORD_ID = "ubm-warmup"
"""The id of the record Triton sends through ``preprocess`` as it loads (``model_warmup``);
requests made only of it are left out of the model's metrics."""

MAX_BATCH_SIZE = 256
"""The largest number of records one request may carry."""
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_URL = f"localhost:{DEFAULT_GRPC_PORT}"

TOKEN_HEADER = "ubm-token"
"""The header that carries a server's client token (`ubm-build serve --token-file`) over HTTP."""
GRPC_TOKEN_HEADER = f"triton-grpc-protocol-{TOKEN_HEADER}"
"""The same over gRPC: Triton expects its restricted-protocol headers with this prefix."""
TOKEN_ENV = "UBM_TOKEN"
"""The environment variable both `ubm-build serve` and `ubm-client` read the token from."""
