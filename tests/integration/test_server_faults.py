"""A fault inside the driver costs one connection, never the server or its other clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharingmemory
from sharingmemory import winioctl
from sharingmemory._defs.protocol import Request
from sharingmemory._driver.driver import Completion, Driver, Handle
from sharingmemory._server.server import DeviceServer, ServerConfig

BUGGY_CODE = sharingmemory.CTL_CODE(winioctl.FILE_DEVICE_UNKNOWN, 0xBAD, 0, winioctl.FILE_READ_ACCESS)


class BuggyDriver(Driver):
    """The real driver, with one injected fault: a request that raises inside dispatch."""

    def dispatch(self, handle: Handle, request: Request) -> Completion:
        if request.code == BUGGY_CODE:
            raise RuntimeError("injected driver bug")
        return super().dispatch(handle, request)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DeviceServer]:
    config = ServerConfig(socket_path=str(tmp_path / "dev" / "SharingMemory"))
    srv = DeviceServer(config, driver=BuggyDriver(config.driver), handle_signals=False)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop()
    thread.join(10)


def test_a_driver_exception_fails_one_request_and_the_server_goes_on(
    server: DeviceServer, caplog: pytest.LogCaptureFixture
) -> None:
    with sharingmemory.open_device(server.socket_path) as bystander:
        page = bystander.map_shared_memory()
        with sharingmemory.open_device(server.socket_path) as victim:
            with pytest.raises(sharingmemory.Unsuccessful):
                victim.device_io_control(BUGGY_CODE)
            with pytest.raises(sharingmemory.DeviceNotConnected):
                victim.query_status()  # its connection was dropped and cleaned up
        status = bystander.query_status()
        assert (status.handles, status.mapped_handles) == (1, 1)
        assert page.read().state == sharingmemory.STATE_RUNNING
    assert "injected driver bug" in caplog.text
