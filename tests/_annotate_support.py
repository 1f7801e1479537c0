"""Helpers of the annotation app's tests: projects, and servers that are always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bow_gym.rounds import load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The small project of these tests (feature cache in memory: no files outside tmp_path).
PROJECT = {"limit": 6, "clicks_per_image": 3, "protocol": "transductive",
           "agent": "answer_model", "progress": False, "feature_cache": None,
           "segmenter_kwargs": {"epochs": 1, "batch_size": 4}, "examples": 2}


def project_config(**overrides: Any) -> Any:
    return load_config(None, **{**PROJECT, **overrides})


class ThreadServer:
    """The app of a project on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, project: Any):
        from werkzeug.serving import make_server

        from bow_gym.annotate.app import create_app

        self.server = make_server("127.0.0.1", 0, create_app(project), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class ServerProcess:
    """``bow-gym annotate serve`` as a subprocess on 127.0.0.1; :meth:`kill` is SIGKILL,
    :meth:`start` again runs the same command. Always stopped on exit."""

    def __init__(self, db: Path, port: int, *extra: str, env: dict[str, str] | None = None):
        self.db, self.port = db, port
        self.port_file = db.parent / "port"
        self.cmd = [sys.executable, "-m", "bow_gym.cli", "annotate", "serve", "--db", str(db),
                    "--host", "127.0.0.1", "--port", str(port), "--port-file",
                    str(self.port_file), "--quiet", *extra]
        self.env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = db.parent / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.port_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(self.db.parent))
        deadline = time.monotonic() + timeout
        while not self.port_file.is_file():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, whatever the server was doing."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
