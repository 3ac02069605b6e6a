"""Tools to attack an `lmforge serve` server on the loopback interface with real HTTP: raw requests on
a socket (any header, any framing), and servers over the shared tiny-gpt2 generator with small limits.
"""

import json
import socket
import time

import pytest

from lmforge.generation.serve import CompletionServer, start_in_thread
from lmforge.generation.serve_limits import ServeLimits


@pytest.fixture
def serve(tiny_generator):
    """serve(**limits) -> a running server with those ServeLimits; all stopped after the test."""
    servers = []

    def start(**limits) -> CompletionServer:
        server = CompletionServer(
            ("127.0.0.1", 0), tiny_generator, "tiny-gpt2", quiet=True, limits=ServeLimits(**limits)
        )
        start_in_thread(server)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def address(server) -> tuple[str, int]:
    return server.server_address[:2]


def request_bytes(
    server, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
) -> bytes:
    """An HTTP/1.1 request with a correct Host and Content-Length unless `headers` says otherwise
    (a header whose value is None is left out), asking the server to close the connection after its
    answer (read_answer reads until it does)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    host, port = address(server)
    fields = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Content-Length": str(len(data))}
    fields["Connection"] = "close"
    if method == "GET" and body is None:
        del fields["Content-Length"]
    fields.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + data


def read_answer(sock: socket.socket) -> tuple[int, dict, dict]:
    """(status, headers with lower-case names, JSON body) read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return int(lines[0].split()[1]), headers, json.loads(body) if body.startswith(b"{") else {}


def send(server, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 20, end=False):
    """Send one request and read the answer; with `end`, say first that the client has no more to send
    (the server then takes the client for gone as soon as it would generate)."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        sock.sendall(request_bytes(server, method, path, body, headers))
        if end:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def post(server, path: str, body, headers: dict | None = None, timeout: float = 20, end=False):
    return send(server, "POST", path, body, headers, timeout, end)


def open_request(server, body: dict, path: str = "/v1/completions") -> socket.socket:
    """A socket that has sent a whole request and waits for its answer (close it to walk away)."""
    sock = socket.create_connection(address(server), timeout=30)
    sock.sendall(request_bytes(server, "POST", path, body))
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (reading and dropping what it sends)."""
    sock.settimeout(within)
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:  # reset by the server
        return True
    return False


def wait_until(condition, within: float, step: float = 0.05) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()
