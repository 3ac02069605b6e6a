"""The connections of `lmforge serve`: uvicorn's HTTP/1.1 protocol (h11) with the limits that belong below
the application, where an ASGI app cannot reach (uvicorn.dev/settings: uvicorn itself bounds only the
keep-alive wait and, with `limit_concurrency`, answers a request past the limit with a plain 503).

- `--max-connections`: a connection past the limit is answered 503 with Retry-After as soon as it is
  accepted, in OpenAI's error shape, and closed: an idle socket cannot wait for a slot.
- `--read-timeout`: a request has that long, from its first byte (from the connection for the first
  request), to send its headers and its whole body, however slowly the bytes come; a request whose
  headers came and whose body did not gets 408, one whose headers did not come is closed. The same
  time bounds the answer's delivery: a client that reads nothing of it for that long is cut off (its
  unread answer would otherwise keep the connection and its memory).
- malformed HTTP (h11's RemoteProtocolError: a bad or conflicting Content-Length, no Host, headers
  past 16 KB) gets 400 in OpenAI's error shape naming h11's reason, not uvicorn's plain text.
- a client that closes its side while its body is still due gets 400 ("the body ended ...").

A client that half-closes after sending its whole request (`shutdown(SHUT_WR)`) is taken for gone, as
uvicorn takes it: its generation stops and it gets no answer.
"""

from __future__ import annotations

import asyncio
import http
import json
import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmforge.generation.serve_limits import RETRY_AFTER_SECONDS, ServeLimits, error_body, error_bytes

REQUEST_ARRIVING = (h11.IDLE, h11.SEND_BODY)  # h11's states of the client while its request is still due
LINGER_SECONDS = 1.0  # after an answer sent from here, what the client still sends is read and dropped this long


def limited_protocol(limits: ServeLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class bound to `limits` (uvicorn.Config(http=...) takes a class)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


class LimitedH11Protocol(H11Protocol):
    limits: ServeLimits = ServeLimits()
    refused = False
    lingering = False
    deadline: asyncio.TimerHandle | None = None
    write_watch: asyncio.TimerHandle | None = None

    # ---- connections: at most max_connections ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.refused = True  # answered from here, never counted
            self.transport = transport
            message = f"the server has {self.limits.max_connections} connections open (--max-connections); try again"
            self._end_with(error_bytes(503, "Service Unavailable", message, {"Retry-After": str(RETRY_AFTER_SECONDS)}))
            return
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if not self.refused:
            super().connection_lost(exc)

    # ---- the request must arrive within read_timeout ------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.refused or self.lingering:
            return
        if self.deadline is None and self.conn.their_state is h11.IDLE:  # the next request on this connection
            self._arm_deadline()
        super().data_received(data)
        if self.conn.their_state not in REQUEST_ARRIVING:  # the whole request is in (or the connection failed)
            self._cancel_deadline()

    def eof_received(self) -> bool | None:
        if self.refused or self.lingering:
            return None
        if self.conn.their_state is h11.SEND_BODY and self.cycle is not None:
            self._answer_early(400, "the body ended before its Content-Length: the client closed its side")
        return None  # close the connection

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self.deadline = self.loop.call_later(self.limits.read_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.transport.is_closing() or self.conn.their_state not in REQUEST_ARRIVING:
            return
        if self.conn.their_state is h11.SEND_BODY and self.cycle is not None:
            message = f"the request did not arrive within {self.limits.read_timeout:g} s (--read-timeout)"
            self._answer_early(408, message)
        else:  # its headers never came: nothing to answer
            self.transport.close()
            self._cancel_timers()

    def _answer_early(self, status: int, message: str) -> None:
        """Answer before the application has (it is waiting for the body), then close; the application's
        wait ends as if the client had left, and nothing it sends later goes out."""
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            self._cancel_timers()
            return
        data = json.dumps(error_body(status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        headers.append((b"connection", b"close"))
        try:
            output = self.conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            output += self.conn.send(h11.Data(data=data)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 cannot answer in this state: just close
            output = b""
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._end_with(output)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to malformed HTTP, in OpenAI's error shape with h11's reason."""
        error = sys.exc_info()[1]  # called while h11's RemoteProtocolError is handled
        message = f"invalid HTTP request: {error}" if error is not None else msg
        self._end_with(error_bytes(400, "Bad Request", message))

    def _end_with(self, data: bytes) -> None:
        """Send `data` and end the connection, reading and dropping what the client still sends for a
        moment: closing with unread bytes would reset the connection, and the client would see the reset
        instead of the answer."""
        self._cancel_timers()
        self.lingering = True
        self.transport.write(data)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.abort)
        else:
            self.transport.close()

    # ---- the answer must be read ---------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_writes()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def _watch_writes(self) -> None:
        if self.write_watch is None and not self.transport.is_closing():
            pending = self.transport.get_write_buffer_size()
            if pending:
                self.write_watch = self.loop.call_later(self.limits.read_timeout, self._writes_checked, pending)

    def _writes_checked(self, pending_before: int) -> None:
        self.write_watch = None
        pending = self.transport.get_write_buffer_size()
        if pending and pending >= pending_before:  # the client read nothing of it in read_timeout
            self.transport.abort()
        elif pending:
            self._watch_writes()

    def _cancel_timers(self) -> None:
        self._cancel_deadline()
        if self.write_watch is not None:
            self.write_watch.cancel()
            self.write_watch = None


def _reason(status: int) -> bytes:
    return http.HTTPStatus(status).phrase.encode()
