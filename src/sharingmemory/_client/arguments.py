"""The checks the library's entry points make of their callers' arguments, in one place.

Theory of operation: a bad value from the caller is the caller's error, so it raises TypeError
(not an integer, not a number) or ValueError (out of range) before anything is sent, and never
what the layer below would raise for it (struct.error, OverflowError from a C conversion). A
timeout too long for any clock call below means no bound, as math.inf does.
"""

from __future__ import annotations

import math
import operator
import threading


def unsigned(name: str, value: object, limit: int | None) -> int:
    """`value` as a non-negative int no larger than `limit`: TypeError for a non-integer (bool
    included), ValueError for one out of range."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if number < 0 or (limit is not None and number > limit):
        raise ValueError(f"{name}={number} is out of range" + (f" (0..{limit:#x})" if limit is not None else ""))
    return number


def request_timeout(timeout: object) -> float | None:
    """A request timeout in seconds as socket.settimeout takes it: None (or math.inf, or
    anything past threading.TIMEOUT_MAX) waits for ever."""
    if type(timeout) is float and 0.0 < timeout < threading.TIMEOUT_MAX:  # the common case, first
        return timeout
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if (isinstance(timeout, float) and math.isnan(timeout)) or timeout <= 0:  # an int can be any size
        raise ValueError("timeout must be positive or None")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return float(timeout)


def wait_timeout(timeout: object) -> float | None:
    """A wait's timeout in seconds: None (or anything past any lifetime) waits for ever; zero
    or less looks once. TypeError for what is not a number, ValueError for NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if isinstance(timeout, float) and math.isnan(timeout):  # an int can be any size: no float()
        raise ValueError("timeout must be a number of seconds, not NaN")
    if timeout > 1e9:  # past any lifetime (and past what poll(2) and time.sleep can take)
        return None
    return float(timeout)
