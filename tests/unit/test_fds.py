"""`Fd` owns one descriptor: it closes once, hands the number on when detached, and a leak warns."""

from __future__ import annotations

import os

import pytest

from sharingmemory._sys import Fd, close_all


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_runs_once_and_never_closes_a_reused_number() -> None:
    read_end, write_end = os.pipe()
    owner = Fd(read_end)
    owner.close()
    assert owner.closed and not _is_open(read_end)
    reused = os.dup(write_end)  # the lowest free number: most likely read_end's old one
    try:
        owner.close()  # a second close must not touch the number, whoever has it now
        assert _is_open(reused)
    finally:
        os.close(reused)
        os.close(write_end)
    with pytest.raises(ValueError, match="closed"):
        owner.fileno()


def test_detach_hands_the_number_on() -> None:
    read_end, write_end = os.pipe()
    owner = Fd(read_end)
    number = owner.detach()
    owner.close()
    assert number == read_end and _is_open(read_end)
    os.close(read_end)
    os.close(write_end)


def test_dup_is_a_second_owner() -> None:
    read_end, write_end = os.pipe()
    with Fd(read_end) as first, first.dup() as second:
        assert second.fileno() != first.fileno()
        assert os.get_inheritable(second.fileno()) is False
    assert not _is_open(read_end)
    os.close(write_end)


def test_an_fd_collected_open_is_closed_with_a_resource_warning() -> None:
    read_end, write_end = os.pipe()
    with pytest.warns(ResourceWarning, match=f"unclosed file descriptor {read_end}"):
        Fd(read_end)  # dropped at once: collected still open
    assert not _is_open(read_end)
    os.close(write_end)


@pytest.mark.parametrize("bad", [-1, True, 3.0, "3", None])
def test_only_a_descriptor_number_is_taken(bad: object) -> None:
    with pytest.raises(ValueError, match="not a file descriptor"):
        Fd(bad)  # type: ignore[arg-type]


def test_close_all_closes_each() -> None:
    pairs = [os.pipe() for _ in range(3)]
    owners = [Fd(r) for r, _w in pairs]
    close_all(owners)
    assert all(owner.closed for owner in owners)
    for _r, w in pairs:
        os.close(w)
