"""Every public entry point answers a bad value with its documented error (issue 9): a typed
NtStatusError subclass, ValueError or TypeError, never struct.error, OverflowError,
AttributeError, a raw OSError or LocalProtocolError. Explicit cases first, then hypothesis
driving the public API with arbitrary arguments against a live driver."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharingmemory
from sharingmemory import winioctl
from sharingmemory._defs import MAX_INPUT_LENGTH, MAX_OUTPUT_BUFFER
from tests.support import DriverProcess

DOCUMENTED = (sharingmemory.NtStatusError, ValueError, TypeError)


@pytest.mark.parametrize("size", [65536, 100_000, 1 << 20, MAX_OUTPUT_BUFFER])
def test_a_generous_output_buffer_is_accepted(driver: DriverProcess, size: int) -> None:
    """A Windows habit: any size up to at least 64 KiB works, as no answer is longer."""
    with driver.open() as device:
        result = device.device_io_control(sharingmemory.IOCTL_QUERY_STATUS, output_size=size)
        assert result.information == len(result.output) > 0
        assert device.device_io_control(sharingmemory.IOCTL_GIVE_ME_YOUR_MEMORY, output_size=size).information == 8


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"output_size": MAX_OUTPUT_BUFFER + 1}, sharingmemory.InsufficientResources),
        ({"output_size": 2**64}, sharingmemory.InsufficientResources),
        ({"output_size": 10**400}, sharingmemory.InsufficientResources),
        ({"output_size": -1}, ValueError),
        ({"output_size": 8.0}, TypeError),
        ({"output_size": "8"}, TypeError),
        ({"output_size": None}, TypeError),
        ({"output_size": True}, TypeError),
        ({"code": -1}, ValueError),
        ({"code": 2**32}, ValueError),
        ({"code": 1.5}, TypeError),
        ({"code": "0x226000"}, TypeError),
        ({"input": "text"}, TypeError),
        ({"input": 12}, TypeError),
        ({"input": [1, 2]}, TypeError),
        ({"input": bytes(MAX_INPUT_LENGTH + 1)}, sharingmemory.InvalidParameter),
    ],
)
def test_device_io_control_refuses_bad_values_and_the_handle_goes_on(
    driver: DriverProcess, kwargs: dict[str, object], error: type[Exception]
) -> None:
    arguments: dict[str, object] = {"code": sharingmemory.IOCTL_QUERY_STATUS, "output_size": 80, **kwargs}
    with driver.open() as device:
        with pytest.raises(error):
            device.device_io_control(**arguments)  # type: ignore[arg-type]
        assert device.query_status().handles >= 1  # nothing was sent: the handle is in step


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 10**400, 9.3e9])
def test_endless_timeouts_mean_no_bound(driver: DriverProcess, timeout: float) -> None:
    with sharingmemory.open_device(driver.socket_path, timeout=timeout, map=True) as device:
        assert device.timeout is None
        assert device.map_shared_memory().wait_next(timeout=timeout).tick_count >= 1


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(math.nan, ValueError), (0, ValueError), (-1, ValueError), (-math.inf, ValueError), ("5", TypeError),
     (True, TypeError), (b"1", TypeError)],
)  # fmt: skip
def test_bad_timeouts_are_refused(driver: DriverProcess, timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        sharingmemory.open_device(driver.socket_path, timeout=timeout)  # type: ignore[arg-type]
    with driver.open_device(map=True) as device:
        page = device.map_shared_memory()
        if error is TypeError or (isinstance(timeout, float) and math.isnan(timeout)):
            with pytest.raises(error):
                page.wait_next(timeout=timeout)  # type: ignore[arg-type]
        else:  # zero or less: look once, then time out
            with pytest.raises(sharingmemory.IoTimeout):
                page.wait_next(timeout=timeout)  # type: ignore[arg-type]


def test_paths_as_bytes_and_path_objects_are_accepted(driver: DriverProcess) -> None:
    path = driver.socket_path
    for name in (os.fsencode(path), pathlib.Path(path), pathlib.PurePosixPath(path)):
        with sharingmemory.open_device(name) as device:
            assert device.path == path


@pytest.mark.parametrize(
    ("name", "error"),
    [(12, TypeError), (1.5, TypeError), ([b"/x"], TypeError), ("", ValueError), (b"", ValueError),
     ("/tmp/a\0b", ValueError), (b"/tmp/a\0b", ValueError), ("\\\\.\\Other", ValueError),
     ("/" + "x" * 200, sharingmemory.NtStatusError), ("/nonexistent/dir/sock", sharingmemory.DeviceNotFound)],
)  # fmt: skip
def test_bad_names_are_refused(name: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        sharingmemory.open_device(name)  # type: ignore[arg-type]


#: A client with only `free` fds to spare: every failure is an NtStatusError subclass.
_FEW_FDS = textwrap.dedent(
    """
    import os, resource, sys
    import sharingmemory
    path = sys.argv[1]
    outcomes = []
    for free in range(6):
        used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + free, 4096))
        try:
            with sharingmemory.open_device(path, map=True) as device:
                device.map_shared_memory().wait_next(timeout=5)
            outcomes.append("ok")
        except sharingmemory.NtStatusError as err:
            outcomes.append(type(err).__name__)
        except BaseException as err:
            outcomes.append("ESCAPED " + repr(err))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    print(" ".join(outcomes))
    """
)


def test_a_client_short_of_fds_gets_typed_errors(driver: DriverProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _FEW_FDS, driver.socket_path],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcomes = result.stdout.split()
    assert "ESCAPED" not in result.stdout, result.stdout
    assert outcomes[0] != "ok" and outcomes[-1] == "ok", outcomes  # no fd fails; enough succeeds


# --- hypothesis ---------------------------------------------------------------------------------

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, 0x00226000, 0x00226004, 0x00222008]), anything)
short_timeouts = st.one_of(
    st.floats(max_value=0.02), st.integers(max_value=0), st.sampled_from([math.nan, -math.inf]), st.text(max_size=3)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=ints, data=st.one_of(st.binary(max_size=64), anything), size=ints)
def test_hypothesis_device_io_control(driver: DriverProcess, code: object, data: object, size: object) -> None:
    with driver.open() as device, contextlib.suppress(*DOCUMENTED):
        device.device_io_control(code, data, size)  # type: ignore[arg-type]


open_arguments = st.fixed_dictionaries({
    "name": st.one_of(st.just("driver"), anything, st.text(max_size=30)),
    "access": st.one_of(st.sampled_from(["r", "w", "rw"]), anything),
    "timeout": st.one_of(st.floats(min_value=0.001, max_value=5), anything),
    "map": anything,
    "trusted_uid": st.one_of(st.none(), anything, st.integers(-5, 2**33)),
})  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=open_arguments, wait=short_timeouts)
def test_hypothesis_open_map_and_wait(driver: DriverProcess, arguments: dict[str, object], wait: object) -> None:
    name = arguments.pop("name")
    access = arguments.pop("access")
    try:
        device = sharingmemory.open_device(
            driver.socket_path if name == "driver" else name,  # type: ignore[arg-type]
            access,  # type: ignore[arg-type]
            **arguments,  # type: ignore[arg-type]
        )
    except DOCUMENTED:
        return
    with device, contextlib.suppress(*DOCUMENTED):
        page = device.map_shared_memory()
        page.read()
        page.wait_next(timeout=wait)  # type: ignore[arg-type]


@given(st.tuples(ints, ints, ints, ints), ints)
def test_hypothesis_ctl_codes(fields: tuple[object, ...], code: object) -> None:
    try:
        packed = sharingmemory.CTL_CODE(*fields)  # type: ignore[arg-type]
    except DOCUMENTED:
        pass
    else:
        assert winioctl.split_ctl_code(packed) == fields
    with contextlib.suppress(*DOCUMENTED):
        assert sharingmemory.CTL_CODE(*winioctl.split_ctl_code(code)) == code  # type: ignore[arg-type]


@given(st.one_of(ints, st.datetimes(timezones=st.timezones()), st.datetimes(), anything))
def test_hypothesis_filetime_conversions(value: object) -> None:
    with contextlib.suppress(*DOCUMENTED):
        sharingmemory.filetime_to_datetime(value)  # type: ignore[arg-type]
    try:
        filetime = sharingmemory.datetime_to_filetime(value)  # type: ignore[arg-type]
    except DOCUMENTED:
        return
    assert isinstance(value, dt.datetime)
    with contextlib.suppress(ValueError):  # an aware datetime near year 1 or 9999 may not round-trip
        sharingmemory.filetime_to_datetime(filetime)
