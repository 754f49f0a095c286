"""Fields of decoded chain events, checked for the type their ABI declares.

web3 gives ``bytesN`` as bytes and ``uintN`` as int; a decoder change or a hand-built
log can give anything. Converting blindly is where the harm is: ``bytes(10**9)`` is a
gigabyte of zeros, ``bytes(32)`` a valid-looking all-zero handle, ``int(inf)`` an
OverflowError no caller catches. Both helpers raise TypeError or ValueError, which
every event decoder turns into its own "malformed event" error.
"""

from __future__ import annotations

from typing import Any


def raw_bytes(value: Any) -> bytes:
    """A ``bytes``/``bytesN`` field."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{type(value).__name__} where bytes were expected")
    return bytes(value)


def uint(value: Any, bits: int) -> int:
    """A ``uint<bits>`` field: an int (not a bool, not a float) in range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} where a uint{bits} was expected")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{value} does not fit a uint{bits}")
    return value
