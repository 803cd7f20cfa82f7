"""The wire format between a ClientApp process and its node's training worker.

One request and one reply per connection over a Unix socket. A message is a
JSON header followed by NumPy arrays in ``.npy`` format, each length-prefixed::

    b"GCFLW1" | header length (4 bytes, big-endian) | header JSON
              | per array: length (8 bytes) | .npy bytes

What a reader does not trust, and how it stays safe from it:

* Content. No pickle anywhere: arrays are read with ``allow_pickle=False`` and
  the header is plain JSON, so malformed bytes are a :class:`ProtocolError`,
  never code run by the reader.
* Size. A message may hold at most :data:`MAX_MESSAGE_BYTES` in all; the
  length prefixes are checked against that cap *before* the bytes they
  announce are read, so a peer cannot make the reader allocate or wait for
  more.
* Time. Every receive has one deadline for the whole message and every send a
  timeout, so a peer that stalls, trickles or stops reading costs the reader
  at most that long (:class:`MessageTimeout`, naming what was missing).

Who may send a message at all is the socket's business (the worker creates it
mode 0600: the node's user and root). What a well-framed header *asks for* is
the worker's business, not this module's: reading a message runs no code, but
a fit request's run config names a model builder to import and data to read,
and the worker trains it only if its node's allow-list allows it
(:class:`gcfl.worker.WorkerPolicy`). This module only frames messages,
and imports neither Flower nor TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import time
from typing import Any

import numpy as np

MAGIC = b"GCFLW1"
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 10_000
# The whole message, framing included. Today's largest payload is the seed CNN:
# 550,570 float32 parameters, about 2.2 MB with its .npy headers. 1 GiB leaves
# room for models some 400 times larger (a --set model=... of a few hundred
# million parameters) while keeping what one hostile or broken message can make
# a worker allocate to a size a node survives.
MAX_MESSAGE_BYTES = 1 << 30
# A message's default deadline. A request or reply is a few MB over a local
# socket, so this is minutes of slack, yet short enough that a stalled peer
# frees its connection soon.
MESSAGE_TIMEOUT_S = 30.0

_PREFIX_BYTES = len(MAGIC) + 4


class ProtocolError(RuntimeError):
    """A message that is not gcfl's worker protocol, or a connection that ended mid-message."""


class MessageTimeout(ProtocolError):
    """A message was not received (or sent) within its deadline; the text says how far it got."""


class _Reader:
    """Reads the parts of one message against one deadline for all of them."""

    def __init__(self, connection: socket.socket, timeout_s: float, what: str) -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        self.what = what
        self.deadline = time.monotonic() + timeout_s

    def exactly(self, size: int, part: str) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            left = self.deadline - time.monotonic()
            chunk = None
            if left > 0:  # settimeout(0) would mean non-blocking, not "no time left"
                self.connection.settimeout(left)
                with contextlib.suppress(TimeoutError):
                    chunk = self.connection.recv(min(size - len(chunks), 1 << 20))
            if chunk is None:
                raise MessageTimeout(
                    f"{self.what} not received within {self.timeout_s:g} s: "
                    f"got {len(chunks)} of {size} bytes of {part}"
                )
            if not chunk:
                raise ProtocolError(
                    f"connection closed after {len(chunks)} of {size} bytes of {part} "
                    f"of a {self.what}"
                )
            chunks += chunk
        return bytes(chunks)


def encode_message(header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """One message: ``header`` (JSON-serialisable) and ``arrays`` (any dtype but object).

    :class:`ProtocolError` if it would exceed :data:`MAX_MESSAGE_BYTES`: the
    reader would refuse it, so it is better not to send it at all.
    """
    body = json.dumps({**header, "arrays": len(arrays)}).encode("utf-8")
    parts = [MAGIC, struct.pack(">I", len(body)), body]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        parts += [struct.pack(">Q", buffer.tell()), buffer.getvalue()]
    size = sum(len(part) for part in parts)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"message of {size} bytes exceeds the cap of {MAX_MESSAGE_BYTES} bytes "
            "(MAX_MESSAGE_BYTES)"
        )
    return b"".join(parts)


def send_message(
    connection: socket.socket,
    header: dict[str, Any],
    arrays: list[np.ndarray] | None = None,
    *,
    timeout_s: float = MESSAGE_TIMEOUT_S,
    what: str = "message",
) -> None:
    """Send one message within ``timeout_s`` (for all of it); :class:`MessageTimeout` if not."""
    payload = encode_message(header, list(arrays or []))
    if timeout_s <= 0:
        raise MessageTimeout(f"{what} not sent: no time was left for it")
    # Since Python 3.5 a socket timeout bounds the whole sendall, not each chunk.
    connection.settimeout(timeout_s)
    try:
        connection.sendall(payload)
    except TimeoutError:
        raise MessageTimeout(
            f"{what} of {len(payload)} bytes not sent within {timeout_s:g} s "
            "(the peer stopped reading)"
        ) from None


def receive_message(
    connection: socket.socket, *, timeout_s: float = MESSAGE_TIMEOUT_S, what: str = "message"
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Read one message within ``timeout_s``; :class:`ProtocolError` says what was wrong with it.

    ``what`` ("request", "reply") names the message in errors.
    """
    reader = _Reader(connection, timeout_s, what)
    magic = reader.exactly(len(MAGIC), "the magic bytes")
    if magic != MAGIC:
        raise ProtocolError(f"not a gcfl worker message (starts with {magic!r})")
    (header_size,) = struct.unpack(">I", reader.exactly(4, "the header length"))
    if header_size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(reader.exactly(header_size, "the header"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object")
    count = header.pop("arrays", 0)
    if not isinstance(count, int) or not 0 <= count <= MAX_ARRAYS:
        raise ProtocolError(f"header's 'arrays' must be a count of 0..{MAX_ARRAYS}, got {count!r}")
    announced = _PREFIX_BYTES + header_size
    arrays = []
    for index in range(count):
        (size,) = struct.unpack(">Q", reader.exactly(8, f"the length of array {index}"))
        announced += 8 + size
        # Checked before reading a byte of the array: the cap must hold against
        # a peer that announces more than it would ever send.
        if announced > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"{what} of at least {announced} bytes (array {index} alone announces {size}) "
                f"exceeds the cap of {MAX_MESSAGE_BYTES} bytes (MAX_MESSAGE_BYTES); not read"
            )
        try:
            payload = io.BytesIO(reader.exactly(size, f"array {index}"))
            arrays.append(np.load(payload, allow_pickle=False))
        except ValueError as error:
            raise ProtocolError(f"array {index} is not a plain .npy array: {error}") from None
    return header, arrays
