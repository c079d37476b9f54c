"""`Driver.handle_limit_reached`: the server's question before a CREATE (whether to take in the
hang-ups already queued first) must say exactly what the CREATE itself would decide."""

from __future__ import annotations

import pytest

from sharingmemory._defs.ioctl import FILE_READ_DATA
from sharingmemory._defs.protocol import MajorFunction, Request
from sharingmemory._defs.status import NtStatus
from sharingmemory._driver.driver import AccessPolicy, Credentials, Driver, DriverConfig, Handle

ALICE = Credentials(pid=100, uid=1000, gid=1000)
BOB = Credentials(pid=200, uid=1001, gid=1001)


def _driver(overall: int, per_uid: int) -> Driver:
    policy = AccessPolicy(uids=frozenset({ALICE.uid, BOB.uid}))
    return Driver(DriverConfig(policy=policy, max_handles=overall, max_handles_per_uid=per_uid))


def _create(driver: Driver, who: Credentials) -> tuple[Handle, int]:
    handle = driver.connect(who)
    return handle, driver.dispatch(handle, Request(MajorFunction.IRP_MJ_CREATE, 1, FILE_READ_DATA)).status


@pytest.mark.parametrize(("overall", "per_uid"), [(3, 2), (2, 2), (4, 1), (1, 1)])
def test_the_answer_matches_what_create_decides(overall: int, per_uid: int) -> None:
    driver = _driver(overall, per_uid)
    handles = []
    for who in (ALICE, BOB, ALICE, BOB, ALICE):
        predicted = driver.handle_limit_reached(who.uid)
        handle, status = _create(driver, who)
        assert predicted == (status == NtStatus.STATUS_TOO_MANY_OPENED_FILES)
        if status == NtStatus.STATUS_SUCCESS:
            handles.append(handle)
        else:
            driver.disconnect(handle)
    for handle in handles:  # a hang-up gives the slot back, and the answer follows
        who = handle.credentials
        driver.disconnect(handle)
        assert not driver.handle_limit_reached(who.uid)


def test_handles_before_create_do_not_count() -> None:
    driver = _driver(1, 1)
    waiting = [driver.connect(ALICE) for _ in range(5)]  # connected, no CREATE yet
    assert not driver.handle_limit_reached(ALICE.uid)
    _handle, status = _create(driver, ALICE)
    assert status == NtStatus.STATUS_SUCCESS
    assert driver.handle_limit_reached(ALICE.uid)
    assert driver.handle_limit_reached(BOB.uid)  # the overall limit
    for handle in waiting:
        driver.disconnect(handle)
