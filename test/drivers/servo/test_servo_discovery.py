"""Finding servos on a bus: broadcast PING, firmware version and baud rate, as the emulator answers them on a pty.

The bytes a host sends are the manufacturers' (shared/vectors/servo_packets.json, here test/data):
a broadcast PING is the vectors' PING with id 0xFE. What comes back is checked byte by byte, by
ROBOTIS' own ``dynamixel_sdk.broadcastPing`` (an independent peer), and by the Feetech reading that
LeRobot's ``FeetechMotorsBus._broadcast_ping`` does (src/lerobot/motors/feetech/feetech.py: 6-byte
statuses back to back, then Model_Number read per id; firmware from registers 0 and 1 in
``_read_firmware_version``). Timing is asserted only as a lower bound (the return delays).
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import dynamixel_sdk as dxl  # test-only dependencies (the test extra)
import pytest
import scservo_sdk as scs
import serial

from bimanual_vla.drivers.servo.control_table import DYNAMIXEL_X, FEETECH_STS
from bimanual_vla.drivers.servo.dynamixel_protocol import DYNAMIXEL, crc16
from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator
from bimanual_vla.drivers.servo.feetech_protocol import FEETECH

VECTORS = json.loads((Path(__file__).parents[2] / 'data' / 'servo_packets.json').read_text())
FEETECH_BROADCAST_PING = bytes.fromhex('ff ff fe 02 01 fe')  # the vector ping_id1 with id 0xFE, checksum redone


@pytest.fixture(autouse=True)
def patient_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDKs wait 2 x LATENCY_TIMER (16 ms); the emulator thread may be descheduled longer on a loaded machine.
    monkeypatch.setattr(scs.port_handler, 'LATENCY_TIMER', 100)
    monkeypatch.setattr(dxl.port_handler, 'LATENCY_TIMER', 100)


def exchange(port: str, request: bytes, baudrate: int = 1_000_000, quiet_s: float = 0.3) -> bytes:
    """Send ``request`` raw and collect every byte until the line has been quiet for ``quiet_s``."""
    with serial.Serial(port, baudrate, timeout=0) as ser:
        ser.reset_input_buffer()
        ser.write(request)
        got = bytearray()
        while True:
            ready, _, _ = select.select([ser.fileno()], [], [], quiet_s)
            if not ready:
                return bytes(got)
            got += os.read(ser.fileno(), 4096)


def feetech_status(servo_id: int) -> bytes:
    """An error-free STS status without parameters, spelled out (not through our codec)."""
    return bytes((0xFF, 0xFF, servo_id, 2, 0, ~(servo_id + 2) & 0xFF))


def test_broadcast_ping_vector_is_the_ping_vector_with_id_fe() -> None:
    ping = bytes.fromhex(VECTORS['feetech_sts']['ping_id1'])
    assert ping[:2] + b'\xfe' + ping[3:5] == FEETECH_BROADCAST_PING[:5]
    assert FEETECH.frame(0xFE, 1, b'') == FEETECH_BROADCAST_PING
    dxl_ping = bytes.fromhex(VECTORS['dynamixel_2']['ping_id1'])
    head = dxl_ping[:4] + b'\xfe' + dxl_ping[5:8]
    crc = crc16(head)
    assert DYNAMIXEL.frame(0xFE, 1, b'') == head + bytes((crc & 0xFF, crc >> 8))


# ---------------------------------------------------------------- Feetech
def test_feetech_broadcast_ping_one_status_per_servo_in_id_order() -> None:
    with ServoBusEmulator('feetech', [5, 1, 3]) as emu:
        got = exchange(emu.port, FEETECH_BROADCAST_PING)
    assert got == feetech_status(1) + feetech_status(3) + feetech_status(5)
    assert got[:6] == bytes.fromhex('ff ff 01 02 00 fc')


def test_feetech_broadcast_ping_skips_missing_servo_and_keeps_alarm_bits() -> None:
    faults = FaultConfig(missing_ids={2}, alarm_bits={3: 0x20})
    with ServoBusEmulator('feetech', [1, 2, 3], faults=faults) as emu:
        got = exchange(emu.port, FEETECH_BROADCAST_PING)
    overload = bytes((0xFF, 0xFF, 3, 2, 0x20, ~(3 + 2 + 0x20) & 0xFF))
    assert got == feetech_status(1) + overload


def test_broadcast_ping_replies_wait_their_return_delays() -> None:
    # Return_Delay_Time 250 (500 us, the factory value): three servos answer no sooner than 1.5 ms.
    with ServoBusEmulator('feetech', [1, 2, 3], return_delay=250) as emu:
        assert emu.servo(2).read_register('return_delay') == 250
        with serial.Serial(emu.port, 1_000_000, timeout=0) as ser:
            start = time.monotonic()
            ser.write(FEETECH_BROADCAST_PING)
            got = bytearray()
            while len(got) < 18:
                select.select([ser.fileno()], [], [], 1.0)
                got += os.read(ser.fileno(), 4096)
            elapsed = time.monotonic() - start
    assert bytes(got) == feetech_status(1) + feetech_status(2) + feetech_status(3)
    assert elapsed >= 3 * 250 * 2e-6


def test_feetech_firmware_registers_as_lerobot_reads_them() -> None:
    # LeRobot FeetechMotorsBus._read_firmware_version: Firmware_Major_Version (0, 1), Firmware_Minor_Version (1, 1).
    with ServoBusEmulator('feetech', [1, 2]) as emu:
        port = scs.PortHandler(emu.port)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            ph = scs.PacketHandler(0)
            major, result, error = ph.read1ByteTxRx(port, 1, 0)
            assert (result, error) == (scs.COMM_SUCCESS, 0)
            minor, _, _ = ph.read1ByteTxRx(port, 1, 1)
            assert f'{major}.{minor}' == '3.10'
            model, _, _ = ph.read2ByteTxRx(port, 2, 3)
            assert model == 777
            # read-only: a write is acknowledged by the STS but changes nothing
            ph.write1ByteTxRx(port, 1, 0, 9)
            assert ph.read1ByteTxRx(port, 1, 0)[0] == 3
        finally:
            port.closePort()


# --------------------------------------------------------------- Dynamixel
@pytest.fixture
def dxl_port() -> Iterator[tuple[ServoBusEmulator, object, object]]:
    with ServoBusEmulator('dynamixel', [4, 2, 1], model_number=1200) as emu:
        port = dxl.PortHandler(emu.port)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            yield emu, port, dxl.PacketHandler(2.0)
        finally:
            port.closePort()


def test_dynamixel_sdk_broadcast_ping_gets_model_and_firmware(dxl_port) -> None:
    emu, port, ph = dxl_port
    found, result = ph.broadcastPing(port)
    assert result == dxl.COMM_SUCCESS
    assert found == {1: [1200, 46], 2: [1200, 46], 4: [1200, 46]}
    firmware, result, error = ph.read1ByteTxRx(port, 4, DYNAMIXEL_X.firmware_version.address)
    assert (firmware, result, error) == (46, dxl.COMM_SUCCESS, 0)
    # read-only: Access Error (7), value kept
    assert ph.write1ByteTxRx(port, 4, DYNAMIXEL_X.firmware_version.address, 1) == (dxl.COMM_SUCCESS, 7)
    assert ph.read1ByteTxRx(port, 4, DYNAMIXEL_X.firmware_version.address)[0] == 46


def test_dynamixel_broadcast_ping_bytes() -> None:
    with ServoBusEmulator('dynamixel', [2, 1]) as emu:
        got = exchange(emu.port, DYNAMIXEL.frame(0xFE, 1, b''))
    first = DYNAMIXEL.status(1, 0, bytes((0x24, 0x04, 46)))  # XL430-W250 = 1060 = 0x0424, firmware 46
    assert got == first + DYNAMIXEL.status(2, 0, bytes((0x24, 0x04, 46)))
    assert first[:9] == bytes.fromhex('ff ff fd 00 01 07 00 55 00')  # 14 bytes, as broadcastPing's STATUS_LENGTH


# ----------------------------------------------------------------- baud rate
@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_servo_hears_only_its_baud_rate(protocol: str) -> None:
    table = FEETECH_STS if protocol == 'feetech' else DYNAMIXEL_X
    codec = FEETECH if protocol == 'feetech' else DYNAMIXEL
    with ServoBusEmulator(protocol, [1], baudrate=57_600) as emu:
        assert emu.servo(1).baudrate == 57_600
        assert exchange(emu.port, codec.ping(1), baudrate=1_000_000) == b''
        assert exchange(emu.port, codec.frame(0xFE, 1, b''), baudrate=115_200) == b''
        answer = exchange(emu.port, codec.ping(1), baudrate=57_600)
        assert codec.decode(answer).servo_id == 1
        # A new Baud_Rate takes effect after the acknowledgement, which still goes out at the old rate.
        new_value = 0 if protocol == 'feetech' else 3  # 1 Mbaud
        ack = exchange(emu.port, codec.write(1, table.baud_rate.address, bytes((new_value,))), baudrate=57_600)
        assert codec.decode(ack).error == 0
        assert exchange(emu.port, codec.ping(1), baudrate=57_600) == b''
        assert codec.decode(exchange(emu.port, codec.ping(1), baudrate=1_000_000)).servo_id == 1
