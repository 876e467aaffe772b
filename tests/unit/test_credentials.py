"""A tracking URI with user:password: sent to the server as HTTP basic auth, never shown in a message."""

from __future__ import annotations

import base64
import http.server
import os
import socket
import threading

import pytest

from kdflow.tracking import TrackingUnreachable, check_tracking, redacted, runs_page, store_uri

USER, PASSWORD = "alice", "s3cr@t:pw"  # a password with the characters a URL must quote
QUOTED = "s3cr%40t%3Apw"


@pytest.fixture
def health_server():
    """An HTTP server whose /health answers 200 to alice's password only (401 otherwise); its port, and the
    Authorization headers it was sent."""
    seen: list[str | None] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            self.send_response(200 if self.path == "/health" and seen[-1] == expected else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def test_redacted_hides_the_password_and_keeps_the_rest() -> None:
    assert redacted(f"https://{USER}:{QUOTED}@mlflow.example:8443/base") == "https://alice:***@mlflow.example:8443/base"
    assert redacted("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redacted("http://token@host") == "http://token@host"  # no password to hide
    assert runs_page(f"http://{USER}:{QUOTED}@host:5000", "7") == (
        "http://host:5000/#/experiments/7/runs?workflowType=machine_learning")


def test_credentials_in_the_uri_are_sent_and_never_printed(tmp_path, monkeypatch, health_server) -> None:
    port, seen = health_server
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{QUOTED}@127.0.0.1:{port}")
    assert check_tracking(tmp_path) == f"MLflow runs go to the tracking server http://alice:***@127.0.0.1:{port}"
    assert seen == ["Basic " + base64.b64encode(b"alice:s3cr@t:pw").decode()]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:wrong@127.0.0.1:{port}")
    with pytest.raises(TrackingUnreachable) as refused:
        check_tracking(tmp_path)
    assert str(refused.value).startswith(f"MLflow tracking server http://alice:***@127.0.0.1:{port} "
                                         "(MLFLOW_TRACKING_URI) refused the credentials (HTTP 401 Unauthorized)")
    assert "wrong" not in str(refused.value)


def test_an_unreachable_server_with_credentials_names_it_without_the_password(tmp_path, monkeypatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{QUOTED}@127.0.0.1:{port}")
    with pytest.raises(TrackingUnreachable) as caught:
        check_tracking(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server http://alice:***@127.0.0.1:{port} (MLFLOW_TRACKING_URI) "
                              "is unreachable (")
    assert QUOTED not in message and PASSWORD not in message and "\n" not in message


def test_mlflow_gets_the_uri_without_the_login_and_the_login_as_its_basic_auth_settings(tmp_path, monkeypatch):
    """MLflow prints its tracking URI in run links and errors: it is handed the URI without user:password, and
    those in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, which it sends as basic auth."""
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://{USER}:{QUOTED}@mlflow.example:8443/base")
    assert store_uri(tmp_path) == "https://mlflow.example:8443/base"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (USER, PASSWORD)
