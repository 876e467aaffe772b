"""How a command's process ends: Python's exit handlers, then the exit, without the module teardown after them
(after torch, MLflow and Prefect, 1-3 s of a command's time). Only the standard library here: a benchmark's measured
process ends the same way, whichever commit's code it runs."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """What Python's own exit runs, in its order, then the exit itself; the module teardown after it is skipped.
    threading's shutdown first wakes idle thread pools (MLflow's artifact repositories keep one each), then joins
    the threads: a plain join would wait forever on a pool still referenced."""
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
