"""Takeover from the operator's terminal: t / h / 1-9 on the e-stop's key reader become teleop/takeover requests."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bimanual_vla.drivers.estop.input import KeyboardEstop
from bimanual_vla.drivers.teleop.takeover import takeover_command

TIMEOUT = 20.0


def test_takeover_keys_map_to_teleop_takeover_messages() -> None:
    arms = ['left', 'right']
    assert takeover_command('t', arms) == 'left right'
    assert takeover_command('h', arms) == 'release'
    assert takeover_command('1', arms) == 'left'
    assert takeover_command('2', arms) == 'right'
    assert takeover_command('3', arms) is None  # past the arms: no key of this map
    assert takeover_command('0', arms) is None
    assert takeover_command('x', arms) is None
    assert takeover_command('t', []) is None  # no arms in takeover mode: no takeover keys at all


def test_the_estop_reader_passes_on_other_keys_and_keeps_its_own(pty: tuple[int, int]) -> None:
    """One reader per terminal: SPACE and r stay the e-stop's, every other printable key goes on."""
    master, slave = pty
    estop: queue.Queue[tuple[bool, str]] = queue.Queue()
    others: queue.Queue[str] = queue.Queue()
    keyboard = KeyboardEstop.open(lambda active, source: estop.put((active, source)), fd=slave, on_other_key=others.put)
    assert keyboard is not None
    try:
        os.write(master, b't r2\x1bh')
        assert [others.get(timeout=TIMEOUT) for _ in range(3)] == ['t', '2', 'h']
        assert [estop.get(timeout=TIMEOUT)[0] for _ in range(2)] == [True, False]
    finally:
        keyboard.close()
    assert others.empty() and estop.empty()  # ESC (a control byte) reached neither


def plan_args(**changes: object) -> argparse.Namespace:
    args = dict(
        rig='so101_sim', leaders='', ramp=False, ramp_velocity=0.5, disarmed=False, attach=False, takeover=False,
        no_cameras=True, estop_key=True,
    )  # fmt: skip
    args.update(changes)
    return argparse.Namespace(**args)


@pytest.mark.parametrize(
    ('changes', 'name', 'arms'),
    [
        ({}, 'estop_input', ''),  # plain teleop: the e-stop keys only
        ({'takeover': True}, 'estop_input', 'left,right'),
        ({'takeover': True, 'attach': True}, 'teleop_keys', 'left,right'),  # beside a rig with its own estop_input
        ({'takeover': True, 'leaders': 'right_leader'}, 'estop_input', 'right'),
        ({'attach': True}, None, None),  # attached without takeover: the rig's terminal has the e-stop keys
        ({'takeover': True, 'estop_key': False}, None, None),
    ],
)
def test_teleop_reads_its_terminal_for_takeover_keys_in_takeover_mode(changes, name, arms) -> None:
    from bimanual_vla.cli.commands.teleop import plan

    readers = [s for s in plan(plan_args(**changes)) if s.executable == 'estop_input']
    if name is None:
        assert readers == []
        return
    (reader,) = readers
    assert reader.name == name
    assert reader.parameters == {'keyboard': True, 'takeover_arms': arms}


@pytest.mark.ros
def test_takeover_keys_on_the_terminal_publish_takeover_requests(ros_context, spin, pty, tmp_path: Path) -> None:
    """The estop_input process as `teleop --takeover` starts it, reading a pseudo-terminal: each takeover key
    is one teleop/takeover message, and SPACE is still the e-stop."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Bool, String

    from bimanual_vla import topics

    master, slave = pty
    listener = rclpy.create_node('takeover_listener', context=ros_context)
    requests: list[str] = []
    estops: list[bool] = []
    listener.create_subscription(String, topics.TELEOP_TAKEOVER, lambda m: requests.append(m.data), topics.RELIABLE_QOS)
    listener.create_subscription(Bool, topics.ESTOP, lambda m: estops.append(m.data), topics.LATCHED_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    log = tmp_path / 'estop_input.log'
    argv = [sys.executable, '-m', 'bimanual_vla.drivers.estop.node', '--ros-args', '-p', 'takeover_arms:=left,right']
    with open(log, 'wb') as out:
        process = subprocess.Popen(argv, stdin=slave, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert spin(executor, lambda: not termios.tcgetattr(slave)[3] & termios.ECHO, 60), log.read_text()
        assert spin(executor, lambda: listener.count_publishers(topics.TELEOP_TAKEOVER) == 1, TIMEOUT)
        # Press 1 until one request is heard: the publisher (volatile) may match this subscriber a moment
        # after the subscriber saw it, and a message sent before that is not kept for it.
        deadline = time.monotonic() + TIMEOUT
        while not requests and time.monotonic() < deadline:
            os.write(master, b'1')
            spin(executor, lambda: bool(requests), 0.5)
        spin(executor, lambda: False, 0.5)  # the last presses' messages in flight
        assert requests and set(requests) == {'left'}, (requests, log.read_text())
        requests.clear()
        for key, expected in (
            (b'h', ['release']),
            (b't', ['release', 'left right']),
            (b'2', ['release', 'left right', 'right']),
        ):
            os.write(master, key)
            assert spin(executor, lambda e=expected: requests == e, TIMEOUT), (requests, log.read_text())
        os.write(master, b' ')
        assert spin(executor, lambda: estops == [True], TIMEOUT), (estops, log.read_text())
        assert requests == ['release', 'left right', 'right']  # SPACE is no takeover key
        process.send_signal(signal.SIGINT)
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        executor.shutdown()
        listener.destroy_node()
    assert 'takeover keys: t takes every arm over, h hands back, 1 left, 2 right' in log.read_text()
