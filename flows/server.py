"""The Prefect API a run talks to: `PREFECT_API_URL` when set, else a temporary local server, started early.
Every command that runs a flow (and every benchmark) gets its API here, and nowhere else.

Without `PREFECT_API_URL`, Prefect would start a temporary server at the flow's first call, and the run would wait
for it (about 12 s here: Prefect imports its server code in this process, then a subprocess imports it again).
`PrefectApi.start()` instead starts `prefect server start` (API only, on 127.0.0.1, no scheduler: nothing is
scheduled on it; for `kdflow serve`, with its scheduler and UI) at once, as a process of its own, and the caller goes on (importing torch, MLflow and the
stages) while it comes up; `settings()` waits for its health check, points Prefect (and any Dask worker it ships
settings to) at it, and stops it on the way out. On Linux it also stops if this process dies.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator

STOP_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 5


class PrefectUnreachable(RuntimeError):
    """The Prefect API in PREFECT_API_URL does not answer."""


def _default_settings() -> None:
    """Before Prefect reads its settings: the temporary server's telemetry otherwise races its own SQLite start-up
    ("database is locked"), and its first start migrates a fresh database, which takes longer than the 20 s default
    on 2 busy cores."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def check_configured_api() -> None:
    """A configured API (PREFECT_API_URL, from the environment or a Prefect profile) must answer its health check
    before anything runs: a dead one would otherwise fail the flow's first call with Prefect's own traceback. A
    URL's password is never shown."""
    _default_settings()
    from prefect.settings import PREFECT_API_URL

    from kdflow.tracking import probe_health, redacted

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        probe_health(url, PROBE_TIMEOUT_S)
        return
    except urllib.error.HTTPError as exc:  # it answered; only a server error means it cannot take runs
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)).replace(url, redacted(url))
    else:  # it answered healthy
        return
    raise PrefectUnreachable(
        f"Prefect API {redacted(url)} (PREFECT_API_URL) is unreachable ({reason}); nothing was run. Start that "
        "server (`prefect server start`), correct PREFECT_API_URL, or unset it for a temporary local server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_with_parent() -> None:
    """In the server's process before exec (Linux): SIGTERM when the process that started it dies, even killed."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class PrefectApi:
    def __init__(self, server: subprocess.Popen | None = None, port: int | None = None, log=None,
                 relaunch: Callable[[], subprocess.Popen] | None = None) -> None:
        self._server, self._port, self._log, self._relaunch = server, port, log, relaunch

    @classmethod
    def start(cls, scheduler: bool = False) -> "PrefectApi":
        """The configured server (`check_configured_api` probes it), or a temporary one starting now in the background:
        API only for one run, or with its scheduler and UI (`scheduler`) for `kdflow serve`, whose schedule it must
        fire."""
        _default_settings()
        if os.environ.get("PREFECT_API_URL"):
            return cls()
        port = _free_port()
        log = tempfile.TemporaryFile(mode="w+")  # its errors, for the message if it fails to start
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                   "--analytics-off", "--log-level", "ERROR"]
        env = dict(os.environ)
        if scheduler:
            # The scheduler looks for due deployments every minute by default: a new schedule's first run would wait.
            env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "5"
        else:
            command += ["--no-ui", "--no-scheduler", "--no-late-runs"]
            # Nor does one run's API register Prefect's block types (it imported every installed collection, Dask's
            # among them, at each start): `prefect server start` does when a person opens the UI.
            env.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")
            env.setdefault("PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION", "false")

        def launch() -> subprocess.Popen:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                    preexec_fn=_stop_with_parent if sys.platform == "linux" else None)

        # Launched before Prefect's settings load (a second of imports): only they say whether a profile or a
        # .env file names an API, which is rare, and then the server just launched is stopped.
        api = cls(launch(), port, log, launch)
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            api.stop()
            return cls()
        return api

    def ui_url(self) -> str:
        """Where a person opens the Prefect UI of this API."""
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

        if self._server is not None:
            return f"http://127.0.0.1:{self._port}"
        return PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")

    def _wait_healthy(self) -> str:
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        url = f"http://127.0.0.1:{self._port}/api"
        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                if self._relaunch is None:
                    break
                # Two servers starting at once on one Prefect database can trip over its migration check: once more.
                time.sleep(1 + random.random())
                self._server, self._relaunch = self._relaunch(), None
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return url
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self._log.seek(0)
        errors = self._log.read()[-2000:]
        state = (f"exited with code {self._server.returncode}" if self._server.poll() is not None else
                 f"did not answer within {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value():.0f} s "
                 "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
        raise RuntimeError(f"Prefect's temporary server on 127.0.0.1:{self._port} {state}; set PREFECT_API_URL to "
                           f"a running server instead.\n{errors}")

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Inside: Prefect talks to this API (waits for a temporary server to answer; stops it after)."""
        if self._server is None:
            yield
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings({PREFECT_API_URL: self._wait_healthy()}):
                try:
                    yield
                finally:
                    from prefect.events.worker import EventsWorker
                    from prefect.logging.handlers import APILogWorker

                    # Send the run's queued logs and events while the server still takes them.
                    APILogWorker.drain_all(timeout=5)
                    EventsWorker.drain_all(timeout=5)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop a temporary server (nothing for a configured one)."""
        if self._server is None or self._log.closed:
            return
        self._server.terminate()
        try:
            self._server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        self._log.close()

