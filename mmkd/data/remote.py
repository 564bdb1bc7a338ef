"""Counting the retries of object-storage requests (S3 ``503 SlowDown``, dropped connections).

The client libraries retry by themselves: botocore (under s3fs) up to its
``max_attempts`` with backoff, then s3fs around that. They only log it, at debug
level; :func:`storage_retries` counts those log records, so an extract summary can
say how often the store or the data was throttled. Records still reach the user's
handlers exactly when they would have without the counter.
"""

from __future__ import annotations

import logging
import threading

# logger -> message prefixes that mean "this request is being retried"
_RETRY_LOGS = {
    "aiobotocore.retryhandler": ("Retry needed, action of",),
    "aiobotocore.retries.standard": ("Retry needed, retrying request",),
    "aiobotocore.retries.adaptive": ("Retry needed, retrying request",),
    "botocore.retryhandler": ("Retry needed, action of",),
    "botocore.retries.standard": ("Retry needed, retrying request",),
    "s3fs": ("Retryable error", "Client error (maybe retryable)"),
}
_THROTTLE_WORDS = ("SlowDown", "reduce your request rate", "Throttl", "503")
_lock = threading.Lock()
_count = 0
_installed = False



def storage_error(path: object, e: BaseException) -> str:
    """One line for a failed object-storage call: the URL, the provider's error, what to check (never a secret)."""
    detail = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, FileNotFoundError):
        detail = f"bucket not found: {detail}"
    return (f"{path} cannot be reached ({type(e).__name__}: {detail}); check the bucket name, the endpoint "
            "(AWS_ENDPOINT_URL or storage_options) and the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE)")

class _RetryCounter(logging.Handler):
    def __init__(self, prefixes: tuple[str, ...], passthrough_level: int) -> None:
        super().__init__(logging.DEBUG)
        self.prefixes = prefixes
        self.passthrough_level = passthrough_level  # the logger's effective level before we lowered it

    def emit(self, record: logging.LogRecord) -> None:
        global _count
        msg = record.getMessage()
        if msg.startswith(self.prefixes) and (not msg.startswith("Client error") or any(
                w in msg for w in _THROTTLE_WORDS)):
            with _lock:
                _count += 1
        if record.levelno >= self.passthrough_level:
            parent = logging.getLogger(record.name).parent
            if parent is not None:
                parent.handle(record)


def storage_retries() -> int:
    """Requests to object storage retried in this process so far (counting starts at the first call)."""
    global _installed
    with _lock:
        if not _installed:
            for name, prefixes in _RETRY_LOGS.items():
                logger = logging.getLogger(name)
                level = logger.getEffectiveLevel()
                if level <= logging.DEBUG:
                    level = logging.DEBUG  # debug logging asked for: pass everything on
                logger.addHandler(_RetryCounter(prefixes, level))
                logger.setLevel(logging.DEBUG)
                logger.propagate = False  # our handler passes records on as the old level would
            _installed = True
        return _count
