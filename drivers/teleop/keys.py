"""The recording operator's inputs: terminal keys (arrows, Esc, a typed line) and an evdev foot pedal. No ROS.

``record-episodes`` is driven as ``lerobot-record`` is: **right arrow** ends the episode (or the reset
period) early, **left arrow** re-records the last episode, **Esc** stops. Besides, a line typed at the
terminal and sent with Enter is the operator's subtask (``policy/subtask``) while demonstrating.

:class:`KeyDecoder` turns the bytes a terminal in cbreak mode sends into :class:`Key` events, with
the times passed in: ``ESC [ C`` / ``ESC O C`` is ``right``, ``ESC [ D`` / ``ESC O D`` ``left``,
any other escape sequence is ignored, and a lone ESC (nothing follows within ``escape_timeout_s``,
the way terminals tell the Esc key from a sequence) is ``escape``. Printable characters build the
line (``edit`` events carry it so far, Backspace removes one character, Ctrl-U the whole line), and
Enter sends it (``line``). :class:`TerminalKeys` reads a file descriptor (standard input, or in
tests a pseudo-terminal) in a thread of its own and calls ``callback(key)`` from there; the terminal's
settings come back on :meth:`TerminalKeys.close`.

:class:`PedalKeys` reads a USB foot pedal (or any keyboard) through ``/dev/input/eventN`` with the
e-stop's evdev record decoding, maps key presses to actions (``PEDAL_DEFAULT``: a three-pedal
switch sending A, B, C is re-record, stop, next: left, middle and right as the arrows and Esc are
laid out) and reopens a device that vanished every ``reopen_s``.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bimanual_vla.drivers.estop.input import (
    EV_KEY,
    EVENT_SIZE,
    PRESS,
    TerminalReader,
    decode_events,
    key_name,
    parse_key,
)

NEXT, RERECORD, STOP = 'next', 'rerecord', 'stop'
ACTIONS = (NEXT, RERECORD, STOP)
KEY_ACTIONS = {'right': NEXT, 'left': RERECORD, 'escape': STOP}
"""Terminal key -> action, as lerobot-record lays them out."""
PEDAL_DEFAULT = 'KEY_A=rerecord,KEY_B=stop,KEY_C=next'

ESC, BACKSPACES, CTRL_U, ENTERS = 0x1B, (0x7F, 0x08), 0x15, (0x0A, 0x0D)


@dataclass(frozen=True)
class Key:
    """``right``, ``left``, ``escape``, ``line`` (text: the line sent) or ``edit`` (text: the line so far)."""

    name: str
    text: str = ''

    @property
    def action(self) -> str | None:
        return KEY_ACTIONS.get(self.name)


class KeyDecoder:
    """Bytes from a cbreak terminal -> :class:`Key` events; see the module docstring. Not thread-safe."""

    def __init__(self, escape_timeout_s: float = 0.05) -> None:
        self.escape_timeout_s = escape_timeout_s
        self.line = ''
        self._seq: bytearray | None = None  # an escape sequence being read (starts with ESC)
        self._seq_t = 0.0
        self._utf8 = bytearray()

    def feed(self, data: bytes, now: float) -> list[Key]:
        keys = self.flush(now) if self._seq is not None and now - self._seq_t > self.escape_timeout_s else []
        for byte in data:
            keys += self._byte(byte, now)
        return keys

    def flush(self, now: float) -> list[Key]:
        """A lone ESC whose timeout has passed is the Esc key (call when no byte came for a while)."""
        if self._seq == bytearray([ESC]) and now - self._seq_t > self.escape_timeout_s:
            self._seq = None
            return [Key('escape')]
        if self._seq is not None and now - self._seq_t > self.escape_timeout_s:
            self._seq = None  # a sequence cut short: dropped
        return []

    def _byte(self, byte: int, now: float) -> list[Key]:
        seq = self._seq
        if seq is not None:
            if byte == ESC:  # ESC ESC: the first was the Esc key
                self._seq, self._seq_t = bytearray([ESC]), now
                return [Key('escape')] if len(seq) == 1 else []
            seq.append(byte)
            if len(seq) == 2:
                if byte in (ord('['), ord('O')):
                    return []
                self._seq = None  # Alt+key: ignored
                return []
            if 0x40 <= byte <= 0x7E:  # the final byte of a CSI / SS3 sequence
                self._seq = None
                return {ord('C'): [Key('right')], ord('D'): [Key('left')]}.get(byte, []) if len(seq) == 3 else []
            return []
        if byte == ESC:
            self._seq, self._seq_t = bytearray([ESC]), now
            return []
        if byte in ENTERS:
            line, self.line = self.line.strip(), ''
            return [Key('line', line)]
        if byte in BACKSPACES:
            self.line = self.line[:-1]
            return [Key('edit', self.line)]
        if byte == CTRL_U:
            self.line = ''
            return [Key('edit', self.line)]
        if byte < 0x20:
            return []
        self._utf8.append(byte)
        try:
            text = self._utf8.decode('utf-8')
        except UnicodeDecodeError:
            if len(self._utf8) >= 4:
                self._utf8.clear()
            return []
        self._utf8.clear()
        self.line += text
        return [Key('edit', self.line)]


class TerminalKeys:
    """Reads keys from a terminal file descriptor in a thread (the e-stop's :class:`TerminalReader`);
    ``callback(key)`` for each, from that thread."""

    def __init__(self, fd: int, callback: Callable[[Key], None], *, escape_timeout_s: float = 0.05) -> None:
        self.fd = fd
        self.decoder = KeyDecoder(escape_timeout_s)
        self._callback = callback
        self._reader = TerminalReader(
            fd, self._on_bytes, name='record-keys', idle_s=escape_timeout_s, on_idle=self._on_idle
        )

    def start(self) -> TerminalKeys:
        """cbreak mode without echo (Ctrl-C still interrupts), then read."""
        self._reader.start()
        return self

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> TerminalKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed_reason(self) -> str | None:
        return self._reader.closed_reason

    def _on_bytes(self, data: bytes, now: float) -> None:
        for key in self.decoder.feed(data, now):
            self._callback(key)

    def _on_idle(self, now: float) -> None:
        for key in self.decoder.flush(now):  # a lone ESC whose timeout has passed: the Esc key
            self._callback(key)


def parse_pedal_map(text: str) -> dict[int, str]:
    """``KEY_A=rerecord,KEY_B=stop,KEY_C=next`` -> {key code: action}; ValueError naming the bad item."""
    out: dict[int, str] = {}
    for item in (i.strip() for i in text.split(',') if i.strip()):
        key, _, action = item.partition('=')
        if action not in ACTIONS:
            raise ValueError(f'pedal map item {item!r}: the action must be one of {", ".join(ACTIONS)}')
        out[parse_key(key.strip())] = action
    if not out:
        raise ValueError('pedal map is empty; e.g. ' + PEDAL_DEFAULT)
    return out


class PedalKeys:
    """An evdev device (a foot pedal) whose key presses are actions: ``callback(action, source)``."""

    def __init__(
        self, path: str, keys: dict[int, str], callback: Callable[[str, str], None], *, reopen_s: float = 1.0
    ) -> None:
        self.path = path
        self.keys = dict(keys)
        self._callback = callback
        self.reopen_s = reopen_s
        self.status = 'not opened'
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='record-pedal', daemon=True)

    def start(self) -> PedalKeys:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                self.status = f'cannot open: {exc.strerror}'
                self._stop.wait(self.reopen_s)
                continue
            self.status = 'open'
            try:
                self._read(fd)
            finally:
                os.close(fd)

    def _read(self, fd: int) -> None:
        pending = b''
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(fd, EVENT_SIZE * 16)
            except BlockingIOError:
                continue
            except OSError as exc:  # ENODEV: unplugged
                self.status = f'vanished: {exc.strerror}'
                return
            if not data:
                self.status = 'vanished: end of file'
                self._stop.wait(self.reopen_s)
                return
            events, pending = decode_events(pending + data)
            for event in events:
                if event.type == EV_KEY and event.value == PRESS and event.code in self.keys:
                    self._callback(self.keys[event.code], f'pedal {key_name(event.code)}')
