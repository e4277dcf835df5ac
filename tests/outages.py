"""Real outages for the tests: a private redis-server and a private Kafka broker this test owns
(their own ports and temp dirs), killed with -9, frozen with SIGSTOP and brought back on the same
data. The shared Redis and Kafka are never touched.

Readiness is a PING answered within a deadline (Redis), or ops/stack's own check (Kafka: the log
says started and a protocol round trip lists the broker), never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.harness import ROOT, free_port


@dataclass
class PrivateRedis:
    """A redis-server on 127.0.0.1:<free port>, data in `directory` (AOF fsynced on every write
    by default, so a kill -9 loses nothing the worker was told was written; `appendfsync=
    "everysec"` is how ops/stack runs Redis: a kill -9 of the process still loses nothing
    acknowledged, since Redis write()s the AOF before it replies and the page cache outlives the
    process; only a host crash can lose the last second)."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, within: float = 20.0) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        self.wait_ready(within)
        return self

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def wait_ready(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"private redis-server exited:\n{self.tail()}")
            if self.answers():
                return
            time.sleep(0.05)
        raise AssertionError(f"private redis-server on port {self.port} not ready:\n{self.tail()}")

    def kill(self) -> None:
        """kill -9: connections reset, nothing flushed beyond what the AOF already holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open, nothing answers (requests time out)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class PrivateKafka:
    """A single-node Kafka broker started by the project's own `ops/stack up kafka`, with
    LEADFLOW_STACK_DIR=`directory` and free ports: its data, log and pid file are this test's.

    `kill()` is a SIGKILL of the pid in <directory>/kafka/kafka.pid; `start()` again brings the
    broker back on the same data directory (ops/stack keeps a formatted directory). With
    `proxied_port` and `proxy_port`, ops/stack adds the second listener PROXIED on
    127.0.0.1:<proxied_port>, advertised as 127.0.0.1:<proxy_port> (a tests/faultproxy.py
    FaultProxy forwarding to it), so clients bootstrapping through the proxy stay behind it while
    the test itself talks to `bootstrap` directly."""

    directory: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proxied_port: int | None = None  # the PROXIED listener (the proxy's target)
    proxy_port: int | None = None  # what the PROXIED listener advertises
    heap: str = "-Xms128m -Xmx384m"
    start_timeout: int = 90

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proxied_bootstrap(self) -> str:
        assert self.proxy_port is not None, "PrivateKafka(proxy_port=...) for a proxied listener"
        return f"127.0.0.1:{self.proxy_port}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka" / "kafka.pid"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "LEADFLOW_STACK_DIR": str(self.directory),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_HEAP": self.heap,
            "KAFKA_START_TIMEOUT": str(self.start_timeout),
            "STOP_TIMEOUT": "15",
        }
        for name in ("KAFKA_PROXIED_PORT", "KAFKA_PROXIED_ADVERTISED_PORT"):
            env.pop(name, None)
        if self.proxied_port is not None:
            assert self.proxy_port is not None, "a proxied listener needs the proxy's port"
            env["KAFKA_PROXIED_PORT"] = str(self.proxied_port)
            env["KAFKA_PROXIED_ADVERTISED_PORT"] = str(self.proxy_port)
        return env

    def stack(self, *args: str) -> str:
        done = subprocess.run(
            [str(ROOT / "ops" / "stack"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=self.start_timeout + 60,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"ops/stack {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n"
                f"{done.stderr}\n{self.tail()}"
            )
        return done.stdout

    def start(self) -> PrivateKafka:
        """`ops/stack up kafka`: returns once ops/stack found the broker ready (it fails, and so
        does this, when the broker cannot start)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.stack("up", "kafka")
        except BaseException:
            self.kill()  # a broker that did not get ready is not left behind
            raise
        return self

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if b"kafka.Kafka" not in cmdline or str(self.directory).encode() not in cmdline:
            return False  # the pid was reused by another process: never signal it
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is dead (threads may linger)

    def kill(self, within: float = 20.0) -> None:
        """kill -9 of the broker: no controlled shutdown, connections reset; returns once the
        process is gone (its ports are free for the restart)."""
        pid = self.pid()
        if pid is None or not self.running():
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + within
        # The JVM's threads take a moment to go; its sockets close with the last one.
        while self.running() or self.listening():
            if time.monotonic() > deadline:
                raise AssertionError(f"kafka pid {pid} still there {within:.0f}s after SIGKILL")
            time.sleep(0.05)

    def listening(self) -> bool:
        ports = [self.port, self.controller_port]
        if self.proxied_port is not None:
            ports.append(self.proxied_port)
        for port in ports:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                continue
            return True
        return False

    def down(self) -> None:
        """`ops/stack down kafka`: a controlled shutdown (SIGTERM); `start()` brings it back."""
        self.stack("down", "kafka")

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung broker)."""
        pid = self.pid()
        assert pid is not None and self.running(), "the broker is not running"
        os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        pid = self.pid()
        if pid is not None and self.running():
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """The end of the test: the broker goes away with a kill (its data is thrown away)."""
        self.thaw()
        self.kill()

    def tail(self, lines: int = 30) -> str:
        path = self.directory / "kafka" / "kafka.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
