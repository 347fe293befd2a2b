"""The recording operator's keys: arrows, Esc and typed lines decoded from terminal bytes, through a pty;
the foot pedal's presses from evdev records through a FIFO."""

from __future__ import annotations

import os
import pty
import queue
import time

import pytest

from bimanual_vla.drivers.estop.input import EV_KEY, EV_SYN, PRESS, RELEASE, pack_event, parse_key
from bimanual_vla.drivers.teleop.keys import (
    NEXT,
    RERECORD,
    STOP,
    Key,
    KeyDecoder,
    PedalKeys,
    TerminalKeys,
    parse_pedal_map,
)


def test_decoder_tells_arrows_esc_and_lines_apart():
    d = KeyDecoder(escape_timeout_s=0.05)
    assert d.feed(b'\x1b[C\x1bOD', 0.0) == [Key('right'), Key('left')]
    assert d.feed(b'\x1b[A\x1b[1;5C', 0.0) == []  # up arrow, Ctrl+right: not ours
    assert d.feed(b'\x1b', 1.0) == [] and d.flush(1.01) == [] and d.flush(1.06) == [Key('escape')]
    assert d.feed(b'\x1b\x1b[C', 2.0) == [Key('escape'), Key('right')]
    keys = d.feed('grasp é\x7fe\r'.encode(), 3.0)
    assert keys[-1] == Key('line', 'grasp e') and d.line == ''
    assert [k.action for k in (Key('right'), Key('left'), Key('escape'), Key('line', 'x'))] == [
        NEXT,
        RERECORD,
        STOP,
        None,
    ]
    # an arrow split across reads is still an arrow
    assert d.feed(b'\x1b[', 4.0) == [] and d.feed(b'D', 4.01) == [Key('left')]


def test_terminal_keys_read_a_pty_in_cbreak_mode():
    got: queue.Queue[Key] = queue.Queue()
    master, slave = pty.openpty()
    try:
        with TerminalKeys(slave, got.put).start():
            os.write(master, b'\x1b[C')
            assert got.get(timeout=5) == Key('right')
            os.write(master, b'\x1b')  # a lone Esc: known only once nothing follows
            assert got.get(timeout=5) == Key('escape')
            os.write(master, b'lift\n')
            keys = [got.get(timeout=5) for _ in range(5)]
            assert keys[-1] == Key('line', 'lift')
            os.write(master, b'\x1b[D')
            assert got.get(timeout=5) == Key('left')
    finally:
        os.close(master)
        os.close(slave)


def test_pedal_presses_become_actions(tmp_path):
    fifo = tmp_path / 'pedal'
    os.mkfifo(fifo)
    got: queue.Queue[tuple[str, str]] = queue.Queue()
    pedal = PedalKeys(str(fifo), parse_pedal_map('KEY_A=rerecord,KEY_C=next'), lambda a, s: got.put((a, s)))
    pedal.start()
    try:
        fd = os.open(fifo, os.O_WRONLY)
        deadline = time.monotonic() + 5
        while pedal.status != 'open' and time.monotonic() < deadline:
            time.sleep(0.01)
        for code, value in ((parse_key('KEY_C'), PRESS), (parse_key('KEY_C'), RELEASE), (parse_key('KEY_B'), PRESS)):
            os.write(fd, pack_event(EV_KEY, code, value) + pack_event(EV_SYN, 0, 0))
        os.write(fd, pack_event(EV_KEY, parse_key('KEY_A'), PRESS)[:10])  # a record split across writes
        os.write(fd, pack_event(EV_KEY, parse_key('KEY_A'), PRESS)[10:])
        assert got.get(timeout=5) == (NEXT, 'pedal KEY_C')
        assert got.get(timeout=5) == (RERECORD, 'pedal KEY_A')  # KEY_B is not mapped; releases do nothing
        os.close(fd)
    finally:
        pedal.close()
    assert got.empty()


def test_pedal_map_refuses_unknown_actions():
    with pytest.raises(ValueError, match="'KEY_A=jump': the action must be one of next, rerecord, stop"):
        parse_pedal_map('KEY_A=jump')
