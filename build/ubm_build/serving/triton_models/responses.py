"""What the python-backend models answer on errors and write to the server log.

Copied next to each model's ``model.py`` by the build. Error messages are cut short, and logged
tracebacks leave out the exception's message, which may quote a record's contents (the server
log must never hold user ids, items or events).
"""

import traceback

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


def error_response(message: str, code: int):
    """An InferenceResponse that fails its request with `message` (cut) and `code`."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(short(message), code))


def traceback_without_values(error: BaseException) -> str:
    """Where `error` was raised, and its type: its message is left out."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    return f"{frames}{type(error).__name__} (message withheld: it may quote a record)"


def log_failure(context: str, error: BaseException, *, warning: bool = False) -> None:
    """Write `context` and `error`'s `traceback_without_values` to the server log."""
    log = pb_utils.Logger.log_warn if warning else pb_utils.Logger.log_error
    log(f"{context}:\n{traceback_without_values(error)}")
