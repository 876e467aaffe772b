"""The Prefect API a run talks to: `PREFECT_API_URL` when set, else a temporary local server, started early.

Without `PREFECT_API_URL`, Prefect starts a temporary server (a subprocess that imports Prefect's server and
migrates its database) at a flow's first call, and the run waits for it. `PrefectApi.start()` starts it at once
in a background thread, so its start-up overlaps what the caller does meanwhile (importing torch, MLflow and
the stages); `settings()` waits for it, points Prefect, and any Dask worker it ships settings to, at it, and
stops it on the way out.
This module imports nothing heavy itself: it is imported before the stages are.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class PrefectApi:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._server = None  # prefect's SubprocessASGIServer, once started
        self._error: BaseException | None = None

    @classmethod
    def start(cls) -> "PrefectApi":
        """The configured server, or a temporary one starting now in the background."""
        from prefect.settings import PREFECT_API_URL

        api = cls()
        if not PREFECT_API_URL.value():
            api._thread = threading.Thread(target=api._start_temporary, name="prefect-temporary-server", daemon=True)
            api._thread.start()
        return api

    def _start_temporary(self) -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            self._server = SubprocessASGIServer()
            self._server.start()
        except BaseException as exc:  # re-raised in the caller's thread by settings()
            self._error = exc

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Inside: Prefect talks to this API (waits for a temporary server to answer its health check; stops it
        after)."""
        if self._thread is None:
            yield
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            with temporary_settings({PREFECT_API_URL: self._server.api_url}):
                yield
        finally:
            if self._server is not None:
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                # Send the run's queued logs and events while the server still takes them.
                APILogWorker.drain_all(timeout=5)
                EventsWorker.drain_all(timeout=5)
                self._server.stop()
