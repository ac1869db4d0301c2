"""A slow network link on loopback: a TCP relay that delays (and optionally paces) every
byte each way, standing for the 4G link between a gateway and its broker.

    with SlowLink("127.0.0.1", broker.port, delay_s=0.05) as link:
        ...  # the gateway connects to 127.0.0.1:link.port

Each direction of each connection is delayed by `delay_s` (so a round trip costs
2 x delay_s) and, with `rate_bytes_s`, no faster than that many bytes per second.
Bytes are never reordered, merged across connections or lost; when either side
closes, the other side is closed once what was in transit has been delivered.
When the upstream refuses (the broker is down), the client's connection is
closed at once, as a real broker's absence would be seen through a NAT.

It runs one asyncio loop on its own thread; it never touches anything but the
sockets it accepted and opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

_CHUNK = 65536


class SlowLink:
    """One listening relay to (host, port). start() / close(), or use it as a context."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        delay_s: float = 0.05,
        rate_bytes_s: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.rate_bytes_s = rate_bytes_s
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: OSError | None = None

    def start(self) -> SlowLink:
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("slow link did not start")
        if self._error is not None:
            raise RuntimeError(f"slow link did not start: {self._error}")
        return self

    def close(self) -> None:
        """Stop listening and drop every connection (as a link that goes down)."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> SlowLink:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the relay's own thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except OSError as exc:  # no port to listen on: reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._relay(reader, writer)
            except asyncio.CancelledError:
                pass  # the link is closing: end quietly (asyncio logs a handler cancelled)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(accepted, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        writers = (c_writer, u_writer)
        try:
            await asyncio.gather(self._pipe(c_reader, u_writer), self._pipe(u_reader, c_writer))
        finally:
            for w in writers:
                w.close()
            for w in writers:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction: read, hold each chunk until delay_s after it arrived (and until
        the pace allows), write. EOF is passed on after the last chunk."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    queue.put_nowait((time.monotonic() + self.delay_s, data))
            except OSError:
                pass
            queue.put_nowait((time.monotonic() + self.delay_s, b""))

        reading = asyncio.create_task(read())
        free_at = 0.0  # when the paced line is free again
        try:
            while True:
                due, data = await queue.get()
                if self.rate_bytes_s and data:
                    free_at = max(due, free_at) + len(data) / self.rate_bytes_s
                    due = free_at
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
