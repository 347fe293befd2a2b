"""The manufacturers' SDKs, as independent peers, talk to our emulator and get the right values.

This checks the emulator (and so, indirectly, what our bus is tested against) with
code we did not write: feetech-servo-sdk's ``scservo_sdk`` and ROBOTIS'
``dynamixel_sdk``. Both are test-only dependencies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import dynamixel_sdk as dxl  # test-only dependencies (the test extra)
import pytest
import scservo_sdk as scs

from bimanual_vla.drivers.servo.control_table import DYNAMIXEL_X, FEETECH_STS
from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

IDS = [1, 2, 3, 4, 5, 6]


@pytest.fixture(autouse=True)
def patient_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDKs wait 2 x LATENCY_TIMER (16 ms) for a reply; on a loaded two-core machine the emulator
    # thread can be descheduled longer than that. Give them 200 ms: this test is about bytes, not speed.
    monkeypatch.setattr(scs.port_handler, 'LATENCY_TIMER', 100)
    monkeypatch.setattr(dxl.port_handler, 'LATENCY_TIMER', 100)


@pytest.fixture
def feetech() -> Iterator[tuple[ServoBusEmulator, object, object]]:
    with ServoBusEmulator('feetech', IDS) as emulator:
        port = scs.PortHandler(emulator.port)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            yield emulator, port, scs.PacketHandler(0)
        finally:
            port.closePort()


@pytest.fixture
def dynamixel() -> Iterator[tuple[ServoBusEmulator, object, object]]:
    with ServoBusEmulator('dynamixel', IDS) as emulator:
        port = dxl.PortHandler(emulator.port)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            yield emulator, port, dxl.PacketHandler(2.0)
        finally:
            port.closePort()


def test_scservo_sdk_ping_read_write_sync(feetech: tuple[ServoBusEmulator, object, object]) -> None:
    emulator, port, ph = feetech
    t = FEETECH_STS
    model, result, error = ph.ping(port, 3)
    assert (model, result, error) == (777, scs.COMM_SUCCESS, 0)
    model, result, _ = ph.ping(port, 9)
    assert result == scs.COMM_RX_TIMEOUT

    for i in IDS:
        emulator.set_present_position(i, 1000 + 11 * i)
    value, result, error = ph.read2ByteTxRx(port, 4, t.present_position.address)
    assert (value, result, error) == (1044, scs.COMM_SUCCESS, 0)

    result, error = ph.write1ByteTxRx(port, 2, t.torque_enable.address, 1)
    assert (result, error) == (scs.COMM_SUCCESS, 0)
    assert emulator.servo(2).torque_enabled and not emulator.servo(1).torque_enabled

    writer = scs.GroupSyncWrite(port, ph, t.goal_position.address, 2)
    goals = {i: 1100 + 100 * (i - 1) for i in IDS}
    for i, g in goals.items():
        assert writer.addParam(i, list(t.encode(t.goal_position, g)))
    assert writer.txPacket() == scs.COMM_SUCCESS
    _wait_for(lambda: emulator.servo(6).goal_position == goals[6])
    assert {i: emulator.servo(i).goal_position for i in IDS} == goals

    emulator.servo(2).write_register('torque_enable', 0)  # hold still for an exact comparison
    reader = scs.GroupSyncRead(port, ph, t.present_position.address, 2)
    for i in IDS:
        assert reader.addParam(i)
    assert reader.txRxPacket() == scs.COMM_SUCCESS
    got = {i: reader.getData(i, t.present_position.address, 2) for i in IDS}
    assert got == {i: emulator.servo(i).present_position for i in IDS}
    assert got[5] == 1055


def test_dynamixel_sdk_ping_read_write_sync(dynamixel: tuple[ServoBusEmulator, object, object]) -> None:
    emulator, port, ph = dynamixel
    t = DYNAMIXEL_X
    model, result, error = ph.ping(port, 3)
    assert (model, result, error) == (1060, dxl.COMM_SUCCESS, 0)

    for i in IDS:
        emulator.set_present_position(i, 1000 + 11 * i)
    value, result, error = ph.read4ByteTxRx(port, 4, t.present_position.address)
    assert (value, result, error) == (1044, dxl.COMM_SUCCESS, 0)

    result, error = ph.write1ByteTxRx(port, 2, t.torque_enable.address, 1)
    assert (result, error) == (dxl.COMM_SUCCESS, 0)
    assert emulator.servo(2).torque_enabled
    # EEPROM is locked while torque is on: the SDK sees the access error bit
    result, error = ph.write4ByteTxRx(port, 2, t.homing_offset.address, 5)
    assert result == dxl.COMM_SUCCESS and error == 7

    writer = dxl.GroupSyncWrite(port, ph, t.goal_position.address, 4)
    goals = {i: 1100 + 100 * (i - 1) for i in IDS}
    for i, g in goals.items():
        assert writer.addParam(i, list(t.encode(t.goal_position, g)))
    assert writer.txPacket() == dxl.COMM_SUCCESS
    _wait_for(lambda: emulator.servo(6).goal_position == goals[6])
    assert {i: emulator.servo(i).goal_position for i in IDS} == goals

    emulator.servo(2).write_register('torque_enable', 0)
    # A present position whose bytes contain FF FF FD: the reply is byte-stuffed, the SDK unstuffs it.
    emulator.set_present_position(1, 0x00FDFFFF)
    reader = dxl.GroupSyncRead(port, ph, t.present_position.address, 4)
    for i in IDS:
        assert reader.addParam(i)
    assert reader.txRxPacket() == dxl.COMM_SUCCESS
    got = {i: reader.getData(i, t.present_position.address, 4) for i in IDS}
    assert got == {i: emulator.servo(i).present_position for i in IDS}
    assert got[1] == 0x00FDFFFF and got[5] == 1055


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
