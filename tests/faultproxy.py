"""A small TCP fault proxy for the fault matrix: a slow link and dropped connections.

`FaultProxy(target_port).start()` listens on 127.0.0.1:<free port> and forwards every connection
to the target. It runs its own event loop in a thread, so a test that blocks its own loop for a
moment (building an oracle, a blocking HTTP call) does not slow the link on top of the fault.

- `latency = 0.02`: every chunk read on either side waits 20 ms before it is forwarded (order is
  kept per direction), so each request/reply round trip costs at least twice that.
- `cut()`: aborts every open connection at once (both sides see a reset), as a failover, a
  firewall or a NAT timeout does. New connections are accepted again right after.
- `refuse = True`: new connections are accepted and closed at once (the service is down).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.harness import free_port

T = TypeVar("T")


@dataclass
class FaultProxy:
    target_port: int
    target_host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    latency: float = 0.0
    refuse: bool = False
    connections: int = 0  # accepted so far
    cuts: int = 0  # connections aborted by cut()

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._open: set[asyncio.StreamWriter] = set()
        self._cut_generation = 0  # bumped by every cut()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The proxy as a Redis URL (a proxy in front of Redis)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        return self

    def cut(self) -> int:
        """Abort every open connection (client and target side); how many were cut."""
        return self._call(self._cut())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _cut(self) -> int:
        self._cut_generation += 1
        victims = list(self._open)
        for writer in victims:
            writer.transport.abort()
        self._open.clear()
        self.cuts += len(victims)
        return len(victims)

    async def _close(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refuse:
            client_w.transport.abort()
            return
        generation = self._cut_generation
        try:
            target_r, target_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        if self.refuse or generation != self._cut_generation:
            # Accepted before a cut (or before refusing began) but still being opened while
            # it ran: cut as well, or it would be the one connection the fault missed.
            client_w.transport.abort()
            target_w.transport.abort()
            return
        self.connections += 1
        self._open |= {client_w, target_w}
        await asyncio.gather(
            self._pump(client_r, target_w, client_w), self._pump(target_r, client_w, target_w)
        )

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, src_w: asyncio.StreamWriter
    ) -> None:
        try:
            while chunk := await src.read(65536):
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                dst.write(chunk)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended or failed: end the other so the client sees the drop.
            for w in (dst, src_w):
                self._open.discard(w)
                if not w.transport.is_closing():
                    w.transport.abort()
