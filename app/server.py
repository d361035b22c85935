"""The HTTP/1.1 protocol the service runs under: uvicorn's httptools protocol with a bounded request head.

uvicorn with httptools puts no limit on the size or number of request headers, and httptools joins the
pieces of a header that arrives over many reads with ``bytes +=``, so one slowly or quickly streamed
200 MB header costs quadratic time and memory while every other client waits. This protocol counts the
bytes of each request head (request line and headers) as the parser hands them over and refuses the
request with 431 and a closed connection once the head passes ``MAX_HEADER_BYTES`` or has more than
``MAX_HEADERS`` headers, so the parser never holds more than about ``MAX_HEADER_BYTES`` plus two reads.

``python -m app`` passes it to uvicorn (``HTTP_PROTOCOL``); ``uvicorn --http app.server:HTTP_PROTOCOL``
is the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.settings import get_settings

log = logging.getLogger(__name__)

# the class path uvicorn imports (``uvicorn.run(http=...)`` / ``--http``)
HTTP_PROTOCOL = "app.server:HeadLimitedHttpToolsProtocol"
# the ": " and CRLF around a header, which the parser does not hand over
_HEADER_FRAMING = 4


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing at once (httptools re-raises it as a parser error)."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that answers 431 and closes once a request head passes the settings' limits.

    The parser hands over the URL piece by piece and each header only when it is complete, so the bytes
    counted are: every URL piece, every complete header, and every read during which the parser handed
    over nothing while a head was open (those bytes all belong to the header being received). At most
    the tail of one read after the last complete header goes uncounted, so a head is refused after at
    most ``MAX_HEADER_BYTES`` plus two reads, and a head within the limits is never refused.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self._head_open = False  # a request head has begun and its headers are not complete yet
        self._head_bytes = 0  # URL pieces and complete headers of the open head
        self._unparsed_bytes = 0  # whole reads since the parser last handed something over
        self._header_count = 0
        self._handed_over = False  # the parser called back during the current read
        self._refused: bytes | None = None  # why the head was refused (the 431's detail)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head limits checked between and inside parser callbacks
        if self._refused is not None:
            return
        self._unset_keepalive_if_required()
        open_before = self._head_open
        self._handed_over = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refused is not None:  # raised by our own callback
                self._send_431()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if open_before and self._head_open and not self._handed_over:
            self._unparsed_bytes += len(data)
            if self._head_bytes + self._unparsed_bytes > self.max_header_bytes:
                self._refused = self._too_large()
                self._send_431()

    # parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = self._handed_over = True
        self._head_bytes = self._unparsed_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._handed_over = True
        self._unparsed_bytes = 0
        self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._refused = self._too_large()
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._handed_over = True
        self._unparsed_bytes = 0
        self._head_bytes += len(name) + len(value) + _HEADER_FRAMING
        self._header_count += 1
        if self._head_bytes > self.max_header_bytes:
            self._refused = self._too_large()
            raise _HeadTooLarge
        if self._header_count > self.max_headers:
            self._refused = b"more than MAX_HEADERS=%d request headers" % self.max_headers
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    # ------------------------------------------------------------------------------------------
    def _too_large(self) -> bytes:
        return b"request line and headers larger than MAX_HEADER_BYTES=%d bytes" % self.max_header_bytes

    def _send_431(self) -> None:
        reason = self._refused or b""
        client = "{}:{}".format(*self.client) if self.client else "a client"
        log.warning("refused a request from %s with 431: %s", client, reason.decode())
        body = b'{"detail":"%s"}' % reason
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
