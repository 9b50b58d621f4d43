"""A real ``redis-server`` on a free loopback port, for the Redis store's tests (never a mock)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

#: Seconds to wait for the server to answer PING, or to exit.
_START = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class RedisServer:
    """One ``redis-server`` process without persistence; `start` again after `kill`, on the
    same port, to play a restart."""

    def __init__(self, directory: Path) -> None:
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.binary = found
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
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
