"""E-stop inputs: the keyboard over a pseudo-terminal, evdev over a FIFO carrying input_event bytes.

The FIFO stands in for /dev/input/eventN: the test writes packed ``struct input_event`` records
into it, and a writer closing it is the device vanishing (a read of end of file, as an unplugged
pedal's read fails with ENODEV).
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bimanual_vla.drivers.estop.input import (
    EV_KEY,
    EV_SYN,
    EVENT_SIZE,
    SYN_DROPPED,
    DeviceStatus,
    EstopArbiter,
    EvdevEstop,
    KeyboardEstop,
    decode_events,
    key_name,
    keyboard_unavailable_reason,
    pack_event,
    parse_key,
)

TIMEOUT = 20.0
KEY_A, KEY_B, KEY_SPACE, BTN_0 = 30, 48, 57, 0x100


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Recorder:
    """Collects callback(active, source) calls and device statuses from the reader threads."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[bool, str]] = queue.Queue()
        self.statuses: list[DeviceStatus] = []
        self._lock = threading.Lock()

    def __call__(self, active: bool, source: str) -> None:
        self.calls.put((active, source))

    def status(self, status: DeviceStatus) -> None:
        with self._lock:
            self.statuses.append(status)

    def next(self) -> tuple[bool, str]:
        return self.calls.get(timeout=TIMEOUT)

    def states(self) -> list[str]:
        with self._lock:
            return [s.state for s in self.statuses]


def key(code: int, value: int) -> bytes:
    """A key event followed by the SYN_REPORT the kernel sends after it."""
    return pack_event(EV_KEY, code, value, 1700000000.25) + pack_event(EV_SYN, 0, 0, 1700000000.25)


def open_writer(path: Path, timeout: float = TIMEOUT) -> int:
    """Open the FIFO for writing once a reader has it open (ENXIO until then), in blocking mode."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / 'event7'
    os.mkfifo(path)
    return path


# --------------------------------------------------------------- records and key names


def test_input_event_layout_and_decoding() -> None:
    assert EVENT_SIZE == struct.calcsize('llHHi') == 24  # 64-bit Linux
    record = pack_event(EV_KEY, KEY_B, 1, 12.5)
    assert record == struct.pack('llHHi', 12, 500000, 1, 48, 1)
    events, rest = decode_events(record + pack_event(EV_SYN, 0, 0) + record[:10])
    assert [(e.sec, e.usec, e.type, e.code, e.value) for e in events] == [(12, 500000, 1, 48, 1), (0, 0, 0, 0, 0)]
    assert rest == record[:10]
    assert decode_events(rest + record[10:]) == ([(12, 500000, 1, 48, 1)], b'')


def test_parse_key_names_and_numbers() -> None:
    assert parse_key('KEY_SPACE') == 57
    assert parse_key('space') == 57
    assert parse_key('KEY_B') == parse_key('b') == 48
    assert parse_key('BTN_0') == 0x100
    assert parse_key('KEY_0') == 11 and parse_key('KEY_1') == 2 and parse_key('KEY_F1') == 59
    assert parse_key('0x30') == parse_key('48') == parse_key(48) == 48
    assert key_name(57) == 'KEY_SPACE' and key_name(0x2FE) == '766'
    with pytest.raises(ValueError, match='unknown key'):
        parse_key('KEY_NOPE')
    with pytest.raises(ValueError, match='outside'):
        parse_key(0x300)


def test_arbiter_latch_and_hold() -> None:
    arbiter = EstopArbiter()
    assert arbiter.active is False
    assert arbiter.hold('pedal', True) is True
    assert arbiter.latch(True) is True
    assert arbiter.hold('pedal', False) is True  # the pedal cannot release a latched stop
    assert arbiter.latch(False) is False
    assert arbiter.hold('pedal', True) is True
    assert arbiter.latch(False) is True  # nor can the keyboard release a pedal that is up
    assert arbiter.holding() == ['pedal']


# ------------------------------------------------------------------------------ keyboard


def test_keyboard_space_stops_r_releases_and_terminal_is_restored(pty: tuple[int, int]) -> None:
    master, slave = pty
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ECHO and before[3] & termios.ICANON
    rec = Recorder()
    keyboard = KeyboardEstop.open(rec, fd=slave)
    assert keyboard is not None
    lflag = termios.tcgetattr(slave)[3]
    assert not lflag & termios.ECHO and not lflag & termios.ICANON and lflag & termios.ISIG

    os.write(master, b' ')
    assert rec.next() == (True, 'keyboard (space)')
    os.write(master, b'x')  # ignored: the next call is the one for r
    os.write(master, b'\nqr')
    assert rec.next() == (False, 'keyboard (r)')
    os.write(master, b'  ')  # every space asserts (no toggle)
    assert [rec.next(), rec.next()] == [(True, 'keyboard (space)')] * 2
    assert rec.calls.empty()
    assert keyboard.presses == 4

    keyboard.close()
    assert not keyboard.running
    assert termios.tcgetattr(slave) == before


def test_keyboard_restores_terminal_when_the_caller_raises(pty: tuple[int, int]) -> None:
    _, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError, match='boom'):
        with KeyboardEstop.open(Recorder(), fd=slave) as keyboard:
            assert keyboard.running
            assert termios.tcgetattr(slave) != before
            raise RuntimeError('boom')
    assert termios.tcgetattr(slave) == before


def test_keyboard_reader_ends_when_the_terminal_hangs_up(pty: tuple[int, int]) -> None:
    master, slave = pty
    keyboard = KeyboardEstop.open(Recorder(), fd=slave)
    assert keyboard is not None
    os.close(master)
    assert wait_for(lambda: not keyboard.running)
    # A hung-up terminal reads as end of file (or EIO, depending on the kernel's path).
    reason = keyboard.closed_reason
    assert reason == 'end of input' or (reason is not None and reason.startswith('read failed: [Errno 5]')), reason
    keyboard.close()


def test_keyboard_unavailable_without_a_terminal() -> None:
    read_end, write_end = os.pipe()
    try:
        assert keyboard_unavailable_reason(read_end) == 'standard input is not a terminal'
        assert KeyboardEstop.open(Recorder(), fd=read_end) is None
    finally:
        os.close(read_end)
        os.close(write_end)


# -------------------------------------------------------------------------------- evdev


def test_evdev_latch_mode(fifo: Path) -> None:
    rec = Recorder()
    with EvdevEstop(str(fifo), rec, key='KEY_B', on_status=rec.status).start() as reader:
        writer = open_writer(fifo)
        assert wait_for(lambda: reader.status.state == 'open')
        assert reader.status.pressed is None  # a FIFO has no EVIOCGKEY
        os.write(writer, key(KEY_A, 1) + key(KEY_A, 0) + key(KEY_B, 1))  # another key first: ignored
        assert rec.next() == (True, f'evdev {fifo} KEY_B pressed')
        os.write(writer, key(KEY_B, 2) + key(KEY_B, 2) + key(KEY_B, 0))  # autorepeat and release: nothing
        record = key(KEY_B, 1)
        os.write(writer, record[:10])  # a record split across two reads is decoded once complete
        os.write(writer, record[10:])
        assert rec.next() == (True, f'evdev {fifo} KEY_B pressed')
        assert rec.calls.empty()
        assert reader.status.events == 5 and reader.status.pressed is True
        assert reader.asserting is False  # latch mode: the node latches; the reader never holds

        os.write(writer, record[:10])
        os.close(writer)  # the device goes mid-record: reported, not asserted in latch mode
        assert wait_for(lambda: 'vanished' in rec.states())
        vanished = next(s for s in rec.statuses if s.state == 'vanished')
        assert vanished.message == 'end of file, 10 bytes of an incomplete record discarded'
        assert vanished.truncated_bytes == 10 and vanished.vanished == 1 and vanished.pressed is None
        assert rec.calls.empty()
    assert rec.states()[-1] == 'closed'


def test_evdev_hold_mode_vanish_asserts_and_reopens(fifo: Path) -> None:
    rec = Recorder()
    reader = EvdevEstop(str(fifo), rec, key='BTN_0', mode='hold', on_status=rec.status, backoff_s=(0.05, 0.5))
    assert reader.asserting is True  # not held yet: stopped
    name = f'evdev {fifo} BTN_0'
    with reader.start():
        writer = open_writer(fifo)
        os.write(writer, key(BTN_0, 1))
        assert rec.next() == (False, f'{name} held')
        os.write(writer, key(BTN_0, 2) + key(KEY_SPACE, 0) + key(BTN_0, 0))  # autorepeat, other key: nothing
        assert rec.next() == (True, f'{name} released')
        os.write(writer, key(BTN_0, 1))
        assert rec.next() == (False, f'{name} held')
        assert reader.asserting is False and reader.status.events == 4

        os.close(writer)  # unplugged while held down: asserted and reported
        assert rec.next() == (True, f'{name} vanished (end of file)')
        assert reader.asserting is True
        assert 'vanished' in rec.states()

        writer = open_writer(fifo)  # it comes back: reopened, and a press releases again
        os.write(writer, key(BTN_0, 1))
        assert rec.next() == (False, f'{name} held')
        assert reader.status.opens == 2 and reader.status.vanished == 1 and reader.status.state == 'open'
        assert rec.states()[:3] == ['open', 'vanished', 'open']

        os.write(writer, pack_event(EV_SYN, SYN_DROPPED, 0))  # the kernel lost events: state unknown
        assert rec.next() == (True, f'{name} state lost (SYN_DROPPED)')
        assert reader.status.dropped == 1 and reader.status.pressed is None
        os.close(writer)
    assert rec.calls.empty()


def test_evdev_missing_device_asserts_in_hold_mode_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / 'pedal'
    rec = Recorder()
    with EvdevEstop(str(path), rec, key='KEY_B', mode='hold', on_status=rec.status, backoff_s=(0.05, 0.2)) as reader:
        reader.start()
        assert wait_for(lambda: reader.status.state == 'missing')
        assert reader.status.message.startswith('cannot open: [Errno 2]')
        assert reader.asserting is True
        os.mkfifo(path)  # plugged in: found on a later retry
        writer = open_writer(path)
        os.write(writer, key(KEY_B, 1))
        assert rec.next() == (False, f'evdev {path} KEY_B held')
        assert rec.states().count('missing') == 1  # repeated failures to open are reported once
        os.close(writer)


def test_evdev_rejects_bad_mode_and_key(fifo: Path) -> None:
    with pytest.raises(ValueError, match='mode'):
        EvdevEstop(str(fifo), Recorder(), mode='toggle')
    with pytest.raises(ValueError, match='unknown key'):
        EvdevEstop(str(fifo), Recorder(), key='KEY_PEDAL')


# ----------------------------------------------------------------------------------- ROS


@pytest.mark.ros
def test_node_publishes_device_press_latched(ros_context, spin, fifo: Path) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool

    from bimanual_vla import topics
    from bimanual_vla.drivers.estop.node import EstopInput

    params = {'keyboard': False, 'device': str(fifo), 'key': 'KEY_SPACE', 'mode': 'latch'}
    node = EstopInput(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()], context=ros_context)
    listener = rclpy.create_node('estop_listener', context=ros_context)
    got: list[bool] = []
    listener.create_subscription(Bool, topics.ESTOP, lambda m: got.append(m.data), topics.LATCHED_QOS)
    diagnostics: list[dict[str, str]] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == 'estop_input: e-stop inputs':
                diagnostics.append({kv.key: kv.value for kv in status.values} | {'message': status.message})

    listener.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diagnostics, topics.DIAGNOSTICS_QOS)
    others = [listener]
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(listener)
    writer = open_writer(fifo)
    try:
        assert node.keyboard is None and node.keyboard_state == 'off'
        os.write(writer, key(KEY_SPACE, 1) + key(KEY_SPACE, 0))
        assert spin(executor, lambda: got == [True], TIMEOUT), got

        late_node = rclpy.create_node('estop_late_joiner', context=ros_context)
        others.append(late_node)
        late: list[bool] = []
        late_node.create_subscription(Bool, topics.ESTOP, lambda m: late.append(m.data), topics.LATCHED_QOS)
        executor.add_node(late_node)
        assert spin(executor, lambda: late == [True], TIMEOUT), late

        # An operator releases on the topic, best effort; the node follows and republishes (latched,
        # which the listener hears), so the next press is a change it publishes again.
        operator = rclpy.create_node('estop_operator', context=ros_context)
        others.append(operator)
        release = operator.create_publisher(Bool, topics.ESTOP, topics.ANY_PUBLISHER_QOS)
        executor.add_node(operator)
        assert spin(executor, lambda: release.get_subscription_count() == 1, TIMEOUT)  # the node's best effort one
        release.publish(Bool(data=False))
        assert spin(executor, lambda: node.published is False and got[-1] is False, TIMEOUT), got
        os.write(writer, key(KEY_SPACE, 1))
        assert spin(executor, lambda: got[-1] is True and node.published is True, TIMEOUT), got

        assert spin(executor, lambda: any(d.get('events') == '3' for d in diagnostics), TIMEOUT), diagnostics
        last = next(d for d in reversed(diagnostics) if d.get('events') == '3')
        assert last['device_state'] == 'open' and last['active'] == 'True' and last['mode'] == 'latch'
        assert last['message'] == 'E-STOP ACTIVE'
    finally:
        os.close(writer)
        executor.shutdown()
        for other in [node, *others]:
            other.destroy_node()


@pytest.mark.ros
def test_node_hold_mode_refuses_a_topic_release_while_the_pedal_is_up(ros_context, spin, fifo: Path) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool

    from bimanual_vla import topics
    from bimanual_vla.drivers.estop.node import EstopInput

    params = {'keyboard': False, 'device': str(fifo), 'key': 'BTN_0', 'mode': 'hold'}
    node = EstopInput(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()], context=ros_context)
    helper = rclpy.create_node('estop_operator', context=ros_context)
    got: list[bool] = []
    helper.create_subscription(Bool, topics.ESTOP, lambda m: got.append(m.data), topics.LATCHED_QOS)
    operator = helper.create_publisher(Bool, topics.ESTOP, topics.RELIABLE_QOS)  # as `ros2 topic pub` offers
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(helper)
    writer = open_writer(fifo)
    try:
        assert spin(executor, lambda: got == [True], TIMEOUT), got  # not held yet: stopped from the start
        os.write(writer, key(BTN_0, 1))
        assert spin(executor, lambda: got == [True, False], TIMEOUT), got
        os.write(writer, key(BTN_0, 0))
        assert spin(executor, lambda: got == [True, False, True], TIMEOUT), got

        assert spin(executor, lambda: operator.get_subscription_count() == 2, TIMEOUT)  # node: reliable + any
        operator.publish(Bool(data=False))  # a release from the topic cannot override the dead-man
        assert spin(executor, lambda: node.refused_releases == 1 and got[-1] is True, TIMEOUT), got
        assert node.published is True and node.arbiter.latched is False

        os.write(writer, key(BTN_0, 1))  # held again: motion allowed
        assert spin(executor, lambda: got[-1] is False and node.published is False, TIMEOUT), got
        os.close(writer)  # unplugged: stopped
        assert spin(executor, lambda: got[-1] is True and node.published is True, TIMEOUT), got
        assert node.device is not None and node.device.status.state in ('vanished', 'open')
    finally:
        executor.shutdown()
        node.destroy_node()
        helper.destroy_node()


@pytest.mark.ros
def test_node_process_reads_the_keyboard_and_restores_the_terminal(
    ros_context, spin, pty: tuple[int, int], tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Bool

    from bimanual_vla import topics

    master, slave = pty
    before = termios.tcgetattr(slave)
    listener = rclpy.create_node('estop_listener', context=ros_context)
    got: list[bool] = []
    listener.create_subscription(Bool, topics.ESTOP, lambda m: got.append(m.data), topics.LATCHED_QOS)
    diagnostics: list[dict[str, str]] = []
    listener.create_subscription(
        DiagnosticArray,
        topics.DIAGNOSTICS,
        lambda msg: diagnostics.extend({kv.key: kv.value for kv in s.values} for s in msg.status),
        topics.DIAGNOSTICS_QOS,
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    log = tmp_path / 'estop_input.log'
    with open(log, 'wb') as out:
        process = subprocess.Popen(
            [sys.executable, '-m', 'bimanual_vla.drivers.estop.node'], stdin=slave, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert spin(executor, lambda: not termios.tcgetattr(slave)[3] & termios.ECHO, 60), log.read_text()
        os.write(master, b' ')
        assert spin(executor, lambda: got == [True], TIMEOUT), (got, log.read_text())
        os.write(master, b'x')
        os.write(master, b'r')
        assert spin(executor, lambda: got == [True, False], TIMEOUT), (got, log.read_text())
        # Interrupt once the node has reported both changes (its own messages taken long since).
        changed = {'changes': '2', 'keyboard': 'on', 'active': 'False'}
        assert spin(executor, lambda: any(changed.items() <= d.items() for d in diagnostics), TIMEOUT), diagnostics
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=TIMEOUT)
        # rclpy can fail a take that races the SIGINT shutdown (exit 1; ros/joint_state_publisher#117);
        # the node is destroyed either way, which is what restores the terminal.
        assert returncode == 0 or 'take_message' in log.read_text(), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        executor.shutdown()
        listener.destroy_node()
    text = log.read_text()
    assert 'keyboard e-stop: SPACE stops, r releases' in text, text
    assert 'E-STOP ASSERTED by keyboard (space)' in text and 'e-stop released by keyboard (r)' in text
    assert termios.tcgetattr(slave) == before
