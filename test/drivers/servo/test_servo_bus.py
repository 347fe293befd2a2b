"""Our ServoBus against the pty emulator, for both protocols, with every fault the emulator can inject.

Assertions are on the values returned (compared with the emulator's registers at
the time of the read), on the exception types and on the counters, never only on
"no exception". Timing is never asserted; margins are generous for a loaded machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bimanual_vla.drivers.servo.bus import BusError, BusTimeout, ChecksumError, PortError, ServoBus, ServoStatusError
from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

IDS = [1, 2, 3, 4, 5, 6]
MARGIN = 0.1  # generous: the emulator thread shares two busy cores with other test processes

pytestmark = pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])


@pytest.fixture
def rig(protocol: str) -> Iterator[tuple[ServoBusEmulator, ServoBus]]:
    emulator = ServoBusEmulator(protocol, IDS)
    emulator.start()
    bus = ServoBus(emulator.port, protocol, timeout_margin_s=MARGIN)
    bus.open()
    try:
        yield emulator, bus
    finally:
        bus.close()
        emulator.stop()


def positions(bus: ServoBus, ids: list[int] = IDS) -> dict[int, int | None]:
    table = bus.control_table
    reg = table.present_position
    raw = bus.sync_read(ids, reg.address, reg.length)
    return {i: None if d is None else table.decode(reg, d) for i, d in raw.items()}


def read_position(bus: ServoBus, servo_id: int) -> int:
    reg = bus.control_table.present_position
    return bus.control_table.decode(reg, bus.read(servo_id, reg.address, reg.length))


def set_positions(emulator: ServoBusEmulator, base: int) -> dict[int, int]:
    truth = {i: base + 7 * i for i in IDS}
    for i, v in truth.items():
        emulator.set_present_position(i, v)
    return truth


# ------------------------------------------------------------------ basics
def test_ping_read_write_sync_read_sync_write(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    table = bus.control_table
    assert bus.ping(4) == table.default_model_number
    truth = set_positions(emulator, 1000)
    assert positions(bus) == truth
    assert read_position(bus, 5) == truth[5]
    # negative positions survive each family's sign encoding
    emulator.set_present_position(2, -123)
    assert read_position(bus, 2) == -123

    bus.write(3, table.torque_enable.address, b'\x01')
    assert emulator.servo(3).torque_enabled and not emulator.servo(2).torque_enabled
    goals = {i: 1500 + 10 * i for i in IDS}
    bus.sync_write(table.goal_position.address, {i: table.encode(table.goal_position, g) for i, g in goals.items()})
    deadline = time.monotonic() + 5
    while emulator.servo(6).goal_position != goals[6] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {i: emulator.servo(i).goal_position for i in IDS} == goals

    # servo 3 has torque on: it moves to its goal at a limited rate; the others stay put
    deadline = time.monotonic() + 5
    while read_position(bus, 3) != goals[3] and time.monotonic() < deadline:
        time.sleep(0.02)
    now = positions(bus)
    assert now[3] == goals[3] and now[4] == truth[4]
    assert bus.counters.transactions > 5 and bus.counters.timeouts == 0 and bus.counters.late_replies == 0
    assert set(bus.counters.as_dict()) >= {'timeouts', 'checksum_errors', 'retries', 'late_replies', 'noise_bytes'}


def test_bad_arguments_are_clear_errors(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    _, bus = rig
    with pytest.raises(ValueError, match='unique'):
        bus.sync_read([1, 1], 56, 2)
    with pytest.raises(ValueError, match='out of range'):
        bus.read(1, 10, 0)
    with pytest.raises(ValueError, match='equal'):
        bus.sync_write(42, {1: b'\x00\x00', 2: b'\x00'})
    with pytest.raises(ValueError, match='servo id'):
        bus.read(255, 10, 1)
    assert bus.sync_read([], 56, 2) == {}


# ------------------------------------------------------------------ faults
def test_missing_servo(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    emulator.faults.missing_ids = {3}
    truth = set_positions(emulator, 800)
    result = positions(bus)
    # the missing servo is None; servos after it are still read
    assert result == {**truth, 3: None}
    assert isinstance(bus.last_sync_errors[3], BusTimeout) and set(bus.last_sync_errors) == {3}
    with pytest.raises(BusTimeout, match='servo 3'):
        read_position(bus, 3)
    with pytest.raises(BusTimeout):
        bus.ping(3)
    assert bus.counters.timeouts >= 1 + 3 + 1
    assert bus.counters.retries >= 2 + 2
    # the last servo missing: the others are still read
    emulator.faults.missing_ids = {6}
    assert positions(bus) == {**truth, 6: None}
    emulator.faults.missing_ids = set()
    assert positions(bus) == truth


def test_corrupt_replies_raise_checksum_error(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    truth = set_positions(emulator, 1200)
    emulator.faults.corrupt_rate = 1.0
    with pytest.raises(ChecksumError, match='servo 2'):
        read_position(bus, 2)
    assert positions(bus) == dict.fromkeys(IDS)
    assert all(isinstance(e, ChecksumError) for e in bus.last_sync_errors.values())
    assert bus.counters.checksum_errors >= 3 + 6 and bus.counters.retries >= 2
    emulator.faults.corrupt_rate = 0.0
    assert positions(bus) == truth


def test_noise_bytes_are_skipped(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    emulator.faults.noise_rate = 1.0
    emulator.faults.seed = 7
    for k in range(20):
        truth = set_positions(emulator, 300 + k)
        result = positions(bus)
        # noise may (rarely) hide a reply, but never changes a value
        assert all(result[i] in (None, truth[i]) for i in IDS)
        assert sum(v is not None for v in result.values()) >= 4
        assert read_position(bus, 1 + k % 6) == truth[1 + k % 6]
    assert bus.counters.noise_bytes > 20


def test_delayed_replies_time_out_and_are_never_taken_later(
    rig: tuple[ServoBusEmulator, ServoBus], protocol: str
) -> None:
    emulator, bus = rig
    old = set_positions(emulator, 500)
    emulator.faults.reply_delay_s = 0.25  # far beyond the deadline
    t0 = time.monotonic()
    with pytest.raises(BusTimeout):
        read_position(bus, 1)
    elapsed = time.monotonic() - t0
    assert bus.counters.timeouts >= 3
    emulator.faults.reply_delay_s = 0.0
    fresh = set_positions(emulator, 2500)
    # the delayed replies (carrying the old values) land while we read again: they must not be taken
    values = []
    for _ in range(6):
        try:
            values.append(read_position(bus, 1))
        except BusTimeout:
            pass
        values.extend(v for v in positions(bus).values() if v is not None)
    assert values and all(v in fresh.values() for v in values)
    assert not set(values) & set(old.values())
    assert elapsed < 10  # sanity only: three deadlines, not a hang


def test_late_reply_never_accepted_as_fresh(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    emulator.set_present_position(2, 111)
    emulator.faults.late_reply_rate = 1.0  # every reply is held back until the next instruction's replies
    with pytest.raises(BusTimeout):
        read_position(bus, 2)  # three attempts, all withheld; the last one (value 111) is still pending
    late_before = bus.counters.late_replies
    assert late_before >= 2  # attempts 2 and 3 each received the previous attempt's reply, and dropped it
    emulator.faults.late_reply_rate = 0.0
    emulator.set_present_position(2, 222)
    # The emulator now sends the withheld reply (111) first, then the fresh one (222).
    assert read_position(bus, 2) == 222
    assert bus.counters.late_replies == late_before + 1

    # Same for a sync read: withhold one cycle, change every position, read again.
    emulator.faults.late_reply_rate = 1.0
    assert positions(bus) == dict.fromkeys(IDS)
    emulator.faults.late_reply_rate = 0.0
    truth = set_positions(emulator, 3000)
    assert positions(bus) == truth
    assert bus.counters.late_replies >= late_before + 1 + 6


def test_random_late_replies_values_always_current(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    bus.timeout_margin_s = 0.03  # many deliberate timeouts here; values are checked, not their count
    emulator.faults = FaultConfig(late_reply_rate=0.4, noise_rate=0.2, corrupt_rate=0.1, seed=3)
    returned = 0
    for k in range(60):
        truth = set_positions(emulator, 100 + 10 * k)
        for i, v in positions(bus).items():
            if v is not None:
                assert v == truth[i], f'cycle {k}: servo {i} returned {v}, a stale value; now {truth[i]}'
                returned += 1
        try:
            assert read_position(bus, 4) == truth[4]
            returned += 1
        except BusError:
            pass
    assert returned > 100
    assert bus.counters.late_replies > 10 and bus.counters.checksum_errors > 0 and bus.counters.noise_bytes > 0


def test_status_errors(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    table = bus.control_table
    # An alarm (overload / hardware alert) does not invalidate the data: value returned, alarm recorded.
    alarm = 0x20 if protocol == 'feetech' else 0x80
    emulator.faults.alarm_bits = {5: alarm}
    emulator.set_present_position(5, 1234)
    assert read_position(bus, 5) == 1234
    assert bus.alarms[5] == bus.protocol.describe_error(alarm) and bus.counters.status_errors == 1
    emulator.faults.alarm_bits = {}
    assert read_position(bus, 5) == 1234 and 5 not in bus.alarms
    if protocol == 'dynamixel':
        # EEPROM is locked while torque is on: the servo answers with an access error, which is not retried.
        bus.write(1, table.torque_enable.address, b'\x01')
        retries = bus.counters.retries
        with pytest.raises(ServoStatusError) as info:
            bus.write(1, table.homing_offset.address, table.encode(table.homing_offset, 100))
        assert info.value.servo_id == 1 and info.value.error_bits == 7 and 'access' in info.value.description
        assert bus.counters.retries == retries
        assert emulator.servo(1).read_register('homing_offset') == 0


def test_port_errors(protocol: str) -> None:
    with pytest.raises(PortError, match='cannot open'):
        ServoBus('/dev/does-not-exist-bimanual', protocol).open()
    emulator = ServoBusEmulator(protocol, [1])
    emulator.start()
    bus = ServoBus(emulator.port, protocol, timeout_margin_s=MARGIN)
    with bus:
        assert bus.ping(1) == bus.control_table.default_model_number
        emulator.stop()  # the "adapter" disappears
        with pytest.raises(PortError):
            for _ in range(3):  # the first call may still write into the dying pty
                bus.ping(1)
        assert not bus.is_open and bus.counters.port_errors >= 1
        bus.close()  # idempotent
        bus.close()


def test_concurrent_threads_share_one_bus(rig: tuple[ServoBusEmulator, ServoBus], protocol: str) -> None:
    emulator, bus = rig
    truth = {i: 600 + i for i in IDS}
    for i, v in truth.items():
        emulator.set_present_position(i, v)
    failures: list[str] = []
    answered = [0]

    def worker(n: int) -> None:
        for k in range(40):
            try:
                if n % 2:
                    got = positions(bus)
                    # a scheduling stall on a loaded machine may cost a reply (None), never a wrong value
                    if any(v is not None and v != truth[i] for i, v in got.items()):
                        failures.append(f'sync {got}')
                    answered[0] += sum(v is not None for v in got.values())
                else:
                    i = IDS[(n + k) % 6]
                    if read_position(bus, i) != truth[i]:
                        failures.append(f'read {i}')
                    answered[0] += 1
            except BusTimeout:
                pass
            except BusError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert bus.counters.transactions >= 160 and answered[0] > 0.9 * (2 * 40 * 6 + 2 * 40)


# ---------------------------------------------------------------------- CLI
def test_emulate_bus_cli_prints_usable_pty(protocol: str) -> None:
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, 'PYTHONPATH': str(repo)}
    proc = subprocess.Popen(
        [sys.executable, '-m', 'bimanual_vla.cli.main', 'emulate-bus', '--protocol', protocol]
        + ['--ids', '1-3', '--drop', '2'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=repo,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith('/dev/'), proc.stderr.read() if proc.poll() is not None else port
        with ServoBus(port, protocol, timeout_margin_s=MARGIN) as bus:
            table = bus.control_table
            assert bus.ping(1) == table.default_model_number
            reg = table.present_position
            assert positions(bus, [1, 2, 3]) == {1: 2048, 2: None, 3: 2048}
            assert table.decode(reg, bus.read(3, reg.address, reg.length)) == 2048
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
