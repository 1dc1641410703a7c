"""A real `mlflow server` (sqlite backend store, local artifact root) on loopback.

The server runs in its own process session so that stopping it kills the whole group (gunicorn/uvicorn
leave children otherwise). `stop()` and `start()` reuse the same port and store, so a test can take the
tracking server down mid-training and bring it back.

`mlflow_tls_proxy` puts HTTPS with a self-signed CA in front of that server (its ``ca`` holds the PEM
files, ``ca.ca_path`` is what a client trusts); `mlflow_auth_proxy` puts plain HTTP that requires Basic
credentials ``user``/``secret`` in front of it, and can be stopped and started again on its port (see
fixtures_tls.py).
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

__all__ = ["mlflow_server", "MlflowServer", "mlflow_tls_proxy", "mlflow_auth_proxy"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root):
        self.root = str(root)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri = f"sqlite:///{os.path.join(self.root, 'mlflow.db')}"
        self.artifact_root = os.path.join(self.root, "artifacts")
        self.log_path = os.path.join(self.root, "server.log")
        self._proc = None

    def start(self, timeout=90):
        if self._proc is not None:
            return
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--default-artifact-root", self.artifact_root,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        log = open(self.log_path, "a")
        self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self._proc.returncode}; see {self.log_path}")
            try:
                if requests.get(self.uri + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout}s; see {self.log_path}")

    def stop(self):
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        except ProcessLookupError:
            pass
        self._proc = None
        # wait until the port is really closed, so a test sees the server as down
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(self.uri + "/health", timeout=0.5)
                time.sleep(0.2)
            except requests.RequestException:
                return


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_tls_proxy(mlflow_server, tmp_path_factory):
    """https://127.0.0.1:<port> in front of `mlflow_server`; its certificate is signed by ``proxy.ca``."""
    from fixtures_tls import ForwardingProxy, make_loopback_ca

    ca = make_loopback_ca(tmp_path_factory.mktemp("tls"))
    proxy = ForwardingProxy(mlflow_server.uri, tls=ca)
    proxy.ca = ca
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def mlflow_auth_proxy(mlflow_server):
    """http://127.0.0.1:<port> in front of `mlflow_server` that answers 401 without Basic ``user``/``secret``."""
    from fixtures_tls import ForwardingProxy

    proxy = ForwardingProxy(mlflow_server.uri, credentials=("user", "secret"))
    proxy.start()
    yield proxy
    proxy.stop()
