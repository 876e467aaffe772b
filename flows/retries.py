"""Which stage failures are worth retrying: transient I/O, never a deterministic error.

A stage writes Parquet and checkpoints and logs to MLflow, possibly over HTTP. A dropped connection, a server
that answers 429/503, a busy database or a flaky disk may succeed a few seconds later; a bad params file, a
corrupt checkpoint or bad data (ConfigError, CheckpointError, ValueError) fails the same way every time, so it
fails the flow at once instead of after the back-off.
"""

from __future__ import annotations

import errno

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

STAGE_RETRIES = 2
# 2 s, then 4 s (each ±50 % jitter): long enough for a restarting server or a released lock.
STAGE_RETRY_DELAYS = exponential_backoff(backoff_factor=2)(STAGE_RETRIES)
STAGE_RETRY_JITTER = 0.5

# OSErrors that name a path problem the next attempt would meet again.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
# The same by errno, for the plain OSErrors that carry them: a read-only file system, no space or quota left, a
# name too long, no permission. Seconds of back-off cure none of them.
_PERMANENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                     errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST}
# MLflow error codes for "try again later" (HTTP 503, 429) and a locked or deadlocked database.
_TRANSIENT_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure: I/O and connection errors, MLflow's 'unavailable' answers."""
    if isinstance(exc, OSError):  # also requests' ConnectionError and Timeout, socket and disk errors
        return not isinstance(exc, _PERMANENT_OS_ERRORS) and exc.errno not in _PERMANENT_ERRNOS
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        # MLflow wraps a connection that failed after its own retries as "API request to ... failed".
        return getattr(exc, "error_code", None) in _TRANSIENT_MLFLOW_CODES or str(exc).startswith("API request to")
    return False


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry a stage only when it failed with a transient error."""
    exc = state.data
    return isinstance(exc, BaseException) and is_transient(exc)


# How every stage-running task (the flow's stages, a sweep's trials) is declared: retried on transient errors only;
# and DVC holds the one record, so Prefect stores no result and reads none back (a stored record names its own
# serializer, pickle by default), whatever PREFECT_RESULTS_PERSIST_BY_DEFAULT says.
STAGE_TASK_OPTIONS = {"retries": STAGE_RETRIES, "retry_delay_seconds": STAGE_RETRY_DELAYS,
                      "retry_jitter_factor": STAGE_RETRY_JITTER, "retry_condition_fn": retry_on_transient,
                      "cache_policy": NO_CACHE, "persist_result": False}
