"""A small real forward proxy for tests: absolute-URI requests (http://) and CONNECT tunnels.

It keeps what it saw (method, target, Proxy-Authorization) and answers 407 when a
``credentials`` pair is set and the request lacks it. One request per connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ForwardProxy:
    credentials: tuple[str, str] | None = None
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
            auth = next((v.strip() for k, v in headers if k.lower() == "proxy-authorization"), None)
            self.seen.append((method, target, auth))
            if self.credentials is not None:
                expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
                if auth != expected:
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                        b"Connection: close\r\n\r\n"
                    )
                    await writer.drain()
                    return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
                return
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            kept = [
                (k, v) for k, v in headers if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")
            ]
            out = [f"{method} {path} {version}", *(f"{k}:{v}" for k, v in kept), "Connection: close", "", ""]
            up_writer.write("\r\n".join(out).encode("latin-1"))
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            if length:
                up_writer.write(await reader.readexactly(length))
            await up_writer.drain()
            # The upstream closes after its answer (Connection: close): pass it all back.
            await pipe(up_reader, writer)
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.close()
