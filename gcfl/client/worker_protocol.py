"""The wire format between a ClientApp process and its node's training worker.

One request and one reply per connection over a Unix socket. A message is a
JSON header followed by NumPy arrays in ``.npy`` format, each length-prefixed::

    b"GCFLW1" | header length (4 bytes, big-endian) | header JSON
              | per array: length (8 bytes) | .npy bytes

No pickle anywhere: arrays are read with ``allow_pickle=False`` and the
header is plain JSON, so a malformed or hostile message is an error, never
code run in the worker. Imports neither Flower nor TensorFlow.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from typing import Any

import numpy as np

MAGIC = b"GCFLW1"
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 10_000
MAX_ARRAY_BYTES = 1 << 33


class ProtocolError(RuntimeError):
    """A message that is not gcfl's worker protocol, or a connection that ended mid-message."""


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = connection.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ProtocolError(
                f"connection closed after {len(chunks)} of {size} bytes of a message"
            )
        chunks += chunk
    return bytes(chunks)


def encode_message(header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """One message: ``header`` (JSON-serialisable) and ``arrays`` (any dtype but object)."""
    body = json.dumps({**header, "arrays": len(arrays)}).encode("utf-8")
    parts = [MAGIC, struct.pack(">I", len(body)), body]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        parts += [struct.pack(">Q", buffer.tell()), buffer.getvalue()]
    return b"".join(parts)


def send_message(
    connection: socket.socket, header: dict[str, Any], arrays: list[np.ndarray] | None = None
) -> None:
    connection.sendall(encode_message(header, list(arrays or [])))


def receive_message(connection: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Read one message; :class:`ProtocolError` says what was wrong with it."""
    magic = _receive_exactly(connection, len(MAGIC))
    if magic != MAGIC:
        raise ProtocolError(f"not a gcfl worker message (starts with {magic!r})")
    (header_size,) = struct.unpack(">I", _receive_exactly(connection, 4))
    if header_size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_receive_exactly(connection, header_size))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a JSON {type(header).__name__}, not an object")
    count = header.pop("arrays", 0)
    if not isinstance(count, int) or not 0 <= count <= MAX_ARRAYS:
        raise ProtocolError(f"header's 'arrays' must be a count of 0..{MAX_ARRAYS}, got {count!r}")
    arrays = []
    for index in range(count):
        (size,) = struct.unpack(">Q", _receive_exactly(connection, 8))
        if size > MAX_ARRAY_BYTES:
            raise ProtocolError(f"array {index} of {size} bytes exceeds {MAX_ARRAY_BYTES}")
        try:
            payload = io.BytesIO(_receive_exactly(connection, size))
            arrays.append(np.load(payload, allow_pickle=False))
        except ValueError as error:
            raise ProtocolError(f"array {index} is not a plain .npy array: {error}") from None
    return header, arrays
