"""A real Milvus standalone server on this machine, for tests and benchmarks: the binary the
``milvus`` package (PyPI) ships, on free ports (the embedded etcd's included) with its own
data directory, started, killed (-9) and restarted in place.

Example
-------
>>> server = MilvusProcess("/tmp/milvus-data", authorization_enabled=True)   # doctest: +SKIP
>>> server.start(); uri = f"{server.uri_base}/faces"                        # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all held open at once while chosen, so none repeats."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_PORT_KEYS = ("etcd_port", "root_coord_port", "proxy_internal_port", "query_coord_port",
              "query_node_port", "index_coord_port", "index_node_port", "data_coord_port",
              "data_node_port")


class MilvusProcess:
    """``start()`` / ``kill()`` / ``restart()`` one Milvus standalone on ``port``.

    ``session_ttl``: seconds the server's etcd session (lease) outlives a silence. A server
    that cannot renew it in time exits on its own, so a short one fails on a loaded box: at
    5 s, a CPU stall of that length on 2 shared cores stopped a CI run's server. It is also
    how long a successor waits after ``kill()``, so a kill-and-restart test wants it short.
    Milvus's own default (30 s) by default.
    """

    def __init__(self, base: Path, session_ttl: int = 30, **config):
        from milvus import MilvusServerConfig, _initialize_data_files

        self.base = Path(base)
        # A port chosen free can be taken (or left in TIME_WAIT by a client's connection)
        # before Milvus's config check binds it: choose a fresh set and try again.
        for attempt in range(5):
            self.port, self.metrics_port, peer, *chosen = free_ports(3 + len(_PORT_KEYS))
            ports = dict(zip(_PORT_KEYS, chosen, strict=True))
            cfg = MilvusServerConfig(data_dir=str(self.base), proxy_port=self.port, **ports)
            # a killed server's etcd session (lease) blocks its successor until it expires
            for key, value in {"common.session.ttl": session_ttl, **config}.items():
                cfg.set(key, value)
            try:
                cfg.resolve()  # writes configs/milvus.yaml under base
                break
            except RuntimeError:  # "set X_port=N, but bind failed"
                cfg.cleanup_listen_ports()
                if attempt == 4:
                    raise
        self._embedded_etcd_ports(ports["etcd_port"], peer)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "megaclass-milvus-server"
        _initialize_data_files(str(cache))  # unpacks the ~60 MB binary once (md5-checked)
        self.exe = cache / "bin" / "milvus"
        self.proc: subprocess.Popen | None = None
        self.token = "root:Milvus" if config.get("authorization_enabled") else ""  # Milvus's default
        self.uri_base = f"milvus://{self.token + '@' if self.token else ''}127.0.0.1:{self.port}"

    def _embedded_etcd_ports(self, client: int, peer: int) -> None:
        """The embedded etcd listens on 2379/2380 unless given a config file: give it free
        ports so that two test runs (or another Milvus) can coexist on the machine."""
        etcd = self.base / "configs" / "etcd.yaml"
        etcd.write_text(f"name: default\nlisten-client-urls: http://127.0.0.1:{client}\n"
                        f"advertise-client-urls: http://127.0.0.1:{client}\n"
                        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
                        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                        f"initial-cluster: default=http://127.0.0.1:{peer}\n")
        conf = self.base / "configs" / "milvus.yaml"
        text = conf.read_text().replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)
        conf.write_text(text)

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until healthy; return the seconds it took."""
        t0 = time.monotonic()
        env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(self.metrics_port),
                   MILVUS_RUN_DIR=str(self.base / "run"),
                   LD_LIBRARY_PATH=f"{self.exe.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        log = open(self.base / "logs" / "milvus.log", "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen([str(self.exe), "run", "standalone"], cwd=self.base, env=env,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus exited with {self.proc.returncode}; see {self.base}/logs")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if b"OK" in r.read():
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"milvus not healthy in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown of any kind) and reap it."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    def restart(self) -> float:
        self.kill()
        return self.start()
