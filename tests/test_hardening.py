"""A hostile client against a real `cronmon serve` process: what it sends
that is not valid HTTP is refused without a traceback or anything it sent
in the log (a ping URL holds a ping key), and slow clients cannot hold
connections open."""

import socket
import time

import httpx
import pytest

from .conftest import write_config
from .test_e2e_serve import Server

KEY = "hardening-ping-key-0123"


@pytest.fixture
def server(tmp_path):
    config = write_config(tmp_path, "monitors:\n  - {id: job, schedule: {interval: 1h}}\n")
    server = Server(config, tmp_path / "data", {"CRONMON_PING_KEY": KEY},
                    ["--workers", "1", "--web.idle-timeout", "1.5", "--log-level", "debug"])
    server.wait_ready()
    yield server
    if server.process.poll() is None:
        server.stop()


def raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_malformed_requests_are_refused_and_logged_without_tracebacks_or_keys(server):
    long_path = f"/ping/{KEY}/job?pad=" + "x" * 9000
    status_line = raw_request(server.port, f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).split(b"\r\n")[0]
    assert status_line.split()[1] in (b"400", b"414")
    big_header = raw_request(
        server.port, f"GET /ping/{KEY}/job HTTP/1.1\r\nHost: x\r\nX-Big: {KEY}{'y' * 9000}\r\n\r\n".encode()
    )
    assert big_header.split()[1] in (b"400", b"431")
    not_gzip = httpx.post(
        f"{server.base}/ping/{KEY}/job", content=b"this is not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert not_gzip.status_code == 400 and "Content-Encoding" in not_gzip.text
    # An Expect header that is not UTF-8 (found by the fuzz suite): aiohttp
    # quoted it into its 417 and failed with a 500; on any path.
    for path in (f"/ping/{KEY}/job", "/no/such/path", "/metrics"):
        expect = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nExpect: ".encode() + b"\x80\r\n\r\n")
        assert expect.split()[1] == b"417", expect[:200]
    garbage = raw_request(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert garbage == b"" or garbage.split()[1] == b"400"
    assert httpx.get(f"{server.base}/ping/{KEY}/job").status_code == 200  # still serving
    assert server.metric("cronmon_runs_total", monitor="job", outcome="ok") == 1  # the bad gzip one recorded nothing
    out = server.stop()
    assert KEY not in out.replace(f"/ping/{KEY}/", "")  # the banner prints ping URLs of its own
    assert "Traceback" not in out and " ERROR " not in out and "ERROR:" not in out
    assert "refused a request that is not valid HTTP" in out


def test_slow_header_clients_are_cut_off_and_do_not_block_pings(server):
    """Slowloris: 100 connections that trickle header lines never finish a
    request; each is closed --web.idle-timeout after it opened, and pings
    are answered meanwhile."""
    socks = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /ping/x/y HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    opened = time.monotonic()
    closed_at = {}
    while len(closed_at) < len(socks) and time.monotonic() - opened < 10:
        assert httpx.get(f"{server.base}/ping/{KEY}/job", timeout=2).status_code == 200
        for i, sock in enumerate(socks):
            if i in closed_at:
                continue
            try:
                sock.sendall(b"X-Trickle: 1\r\n")
                sock.settimeout(0.01)
                if sock.recv(1) == b"":
                    closed_at[i] = time.monotonic() - opened
            except TimeoutError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - opened
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} slow connections still open after 10 s"
    assert max(closed_at.values()) < 6


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_corrupt_compressed_body_sent_after_its_headers_is_refused_at_once(server, encoding):
    """Headers first, then (in a later packet) a body that is not what its
    Content-Encoding says: 400 at once, naming the header, nothing
    recorded, no traceback. cronmon inflates bodies in the kit now; with
    aiohttp's parser inflating them, the fuzz suite saw (timing-dependent,
    2 runs in 4) a request whose handler waited for a body the parser had
    given up on, answered only when the client timed out."""
    body = b"[[]] this is not compressed"
    head = (f"POST /ping/{KEY}/job HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the handler is now waiting for the body
        started = time.monotonic()
        sock.sendall(body)
        reply = sock.recv(65536)
        answered_in = time.monotonic() - started
    assert reply.split()[1] == b"400", reply[:200]
    assert b"Content-Encoding" in reply and answered_in < 3
    assert server.metric("cronmon_runs_total", monitor="job", outcome="ok") == 0
    out = server.stop()
    assert "Traceback" not in out and " ERROR " not in out


def test_bodies_inflate_up_to_the_limit_and_no_further(server):
    import gzip as gz
    import zlib

    import brotli

    log = b"line\n" * 1000
    packed_as = {"gzip": gz.compress(log), "br": brotli.compress(log), "deflate": zlib.compress(log),
                 "gzip, br": brotli.compress(gz.compress(log))}
    for encoding, packed in packed_as.items():
        response = httpx.post(f"{server.base}/ping/{KEY}/job", content=packed, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)
    # A bomb: 2 MB of zeros in a few kB, over the 100,000-byte body limit once inflated.
    for encoding, packed in (("gzip", gz.compress(b"\0" * 2_000_000)), ("br", brotli.compress(b"\0" * 2_000_000))):
        response = httpx.post(f"{server.base}/ping/{KEY}/job", content=packed, headers={"Content-Encoding": encoding})
        assert response.status_code == 413 and "inflated" in response.text, encoding
    unknown = httpx.post(f"{server.base}/ping/{KEY}/job", content=b"x", headers={"Content-Encoding": "zstd"})
    assert unknown.status_code == 415 and "zstd" in unknown.text
    assert server.metric("cronmon_runs_total", monitor="job", outcome="ok") == 4
