"""Run ``megaclass serve`` as a child process on a free loopback port (tests, load tests).

Example
-------
>>> with ServerProcess("model/", "gallery/") as server:         # doctest: +SKIP
...     httpx.get(server.url + "/healthz").json()
{'status': 'ok'}
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..errors import MegaclassError


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m megaclass.cli serve`` on 127.0.0.1, started on enter, stopped on exit.

    ``start`` waits until ``/readyz`` answers 200 (or raises, with the server's stderr).
    ``stop`` sends SIGTERM (a graceful uvicorn shutdown that saves the gallery index) and
    kills the process if it has not exited after ``grace`` seconds.
    """

    def __init__(self, model: str | os.PathLike, gallery: str | os.PathLike, *, port: int | None = None,
                 extra_args: tuple[str, ...] = (), startup_timeout: float = 60.0, log: Path | None = None):
        self.model, self.gallery = Path(model), Path(gallery)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "megaclass.cli", "serve", "--model", str(self.model),
               "--gallery", str(self.gallery), "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning", *self.extra_args]
        self._err = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MegaclassError(f"megaclass serve exited with status {self.proc.returncode}"
                                     + (f" (see {self.log})" if self.log else ""))
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise MegaclassError(f"megaclass serve did not become ready in {self.startup_timeout:.0f} s")

    def stop(self, grace: float = 20.0) -> int | None:
        """Stop the server; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not isinstance(self._err, int):  # a log file (else subprocess.DEVNULL)
            self._err.close()
        code, self.proc = self.proc.returncode, None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
