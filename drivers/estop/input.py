"""E-stop inputs besides the ``estop`` topic: a terminal key and an evdev key (a USB foot pedal).

No rclpy here: ``drivers/estop/node.py`` adapts these readers to the ``estop`` topic. Each
reader runs in a thread of its own and calls ``callback(active, source)`` from that thread:
``active`` True asserts the e-stop, False releases what this reader asserted; ``source`` says
which input did it and why, for the log.

Keyboard (:class:`KeyboardEstop`, on the terminal's one :class:`TerminalReader`): on a terminal,
in cbreak mode without echo (Ctrl-C still interrupts), **space** asserts the e-stop and **r**
releases it. Releasing takes a different key on purpose: a second tap of the stop key in a panic
must never release. Every other printable key goes to ``on_other_key`` if given (takeover keys),
else nowhere. The terminal's previous settings come back on :meth:`KeyboardEstop.close` (also when
starting fails). Standard input that is not a terminal, or a terminal this process is not in the
foreground of (started with ``&``), is not used: :meth:`KeyboardEstop.open` returns None and
:func:`keyboard_unavailable_reason` says why.

Evdev (:class:`EvdevEstop`): Linux ``struct input_event`` records read from ``/dev/input/eventN``
(``EVENT_FORMAT``: timeval as two longs, u16 type, u16 code, s32 value; 24 bytes on 64-bit
Linux). Only EV_KEY events of the configured key count: value 1 press, 0 release, 2 autorepeat
(ignored: the key is still down). Two modes:

``latch`` (default)
    A press asserts the e-stop; releasing the key does nothing. Only the keyboard's **r** or an
    ``estop`` false on the topic releases it. Suits a big red USB button or any pedal or key.
``hold`` (dead-man)
    Motion is allowed only while the key is held down: releasing it asserts the e-stop, pressing
    it releases what this reader asserted (an e-stop latched by the keyboard or the topic stays).
    Suits momentary pedals that report a key down while the foot is on them and up when it lifts
    (USB foot switches programmed as a single key, e.g. the PCsensor/iKKEGOL FS20xx family, or
    game-controller pedals reporting a BTN_* button). Not for latching (push-on/push-off) pedals
    or pedals programmed to type a string or macro (they press and release at once).

A device that vanishes (a read error such as ENODEV when the pedal is unplugged, or end of file
when the writer of a FIFO standing in for it closes) is reported through ``on_status`` and, in
hold mode, asserts the e-stop; a device that cannot be opened counts the same. The reader
reopens the path with exponential backoff (``backoff_s``) until it comes back. On (re)open the
key's current state is read with the EVIOCGKEY ioctl where the device supports it; otherwise, and
after the kernel reports dropped events (SYN_DROPPED), a hold-mode key counts as released.

Reading /dev/input/event* needs read permission: membership of the ``input`` group, or a udev rule
for the pedal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

EstopCallback = Callable[[bool, str], None]
"""callback(active, source): active True asserts the e-stop, False releases this reader's assertion."""

Mode = Literal['latch', 'hold']
MODES: tuple[str, ...] = ('latch', 'hold')

# ------------------------------------------------------------------ input_event records

EVENT_FORMAT = 'llHHi'
"""struct input_event: struct timeval (tv_sec, tv_usec as C longs), __u16 type, __u16 code, __s32 value."""
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)
"""Bytes per record: 24 on 64-bit Linux."""

EV_SYN = 0
EV_KEY = 1
SYN_DROPPED = 3
RELEASE, PRESS, AUTOREPEAT = 0, 1, 2

KEY_MAX = 0x2FF
# EVIOCGKEY(len) = _IOC(_IOC_READ, 'E', 0x18, len): the bitmap of keys currently down.
_KEY_BITMAP_BYTES = (KEY_MAX + 7) // 8 + 1
EVIOCGKEY = (2 << 30) | (_KEY_BITMAP_BYTES << 16) | (ord('E') << 8) | 0x18


class InputEvent(NamedTuple):
    sec: int
    usec: int
    type: int
    code: int
    value: int


def pack_event(type_: int, code: int, value: int, t: float = 0.0) -> bytes:
    """One ``struct input_event`` as the kernel writes it (what a FIFO standing in for a device carries)."""
    sec = int(t)
    return struct.pack(EVENT_FORMAT, sec, int(round((t - sec) * 1e6)), type_, code, value)


def decode_events(buffer: bytes) -> tuple[list[InputEvent], bytes]:
    """Whole records in `buffer` and the bytes of an incomplete last one (kept for the next read)."""
    whole = len(buffer) - len(buffer) % EVENT_SIZE
    events = [InputEvent(*fields) for fields in struct.iter_unpack(EVENT_FORMAT, buffer[:whole])]
    return events, buffer[whole:]


def _key_codes() -> dict[str, int]:
    """Names of common key and button codes (linux/input-event-codes.h)."""
    codes = {
        'KEY_ESC': 1,
        'KEY_BACKSPACE': 14,
        'KEY_TAB': 15,
        'KEY_ENTER': 28,
        'KEY_LEFTCTRL': 29,
        'KEY_LEFTSHIFT': 42,
        'KEY_RIGHTSHIFT': 54,
        'KEY_LEFTALT': 56,
        'KEY_SPACE': 57,
        'KEY_CAPSLOCK': 58,
        'KEY_F11': 87,
        'KEY_F12': 88,
        'KEY_RIGHTCTRL': 97,
        'KEY_RIGHTALT': 100,
        'KEY_HOME': 102,
        'KEY_UP': 103,
        'KEY_PAGEUP': 104,
        'KEY_LEFT': 105,
        'KEY_RIGHT': 106,
        'KEY_END': 107,
        'KEY_DOWN': 108,
        'KEY_PAGEDOWN': 109,
        'KEY_INSERT': 110,
        'KEY_DELETE': 111,
        'KEY_PAUSE': 119,
        'KEY_PLAYPAUSE': 164,
        'KEY_F13': 183,
        'BTN_LEFT': 0x110,
        'BTN_RIGHT': 0x111,
        'BTN_MIDDLE': 0x112,
        'BTN_TRIGGER': 0x120,
        'BTN_THUMB': 0x121,
        'BTN_THUMB2': 0x122,
        'BTN_TOP': 0x123,
        'BTN_SOUTH': 0x130,
        'BTN_EAST': 0x131,
        'BTN_NORTH': 0x133,
        'BTN_WEST': 0x134,
    }
    codes.update({f'KEY_{n}': 2 + (n - 1) % 10 for n in range(1, 11)})  # KEY_1=2 .. KEY_9=10, KEY_0=11
    codes['KEY_0'] = codes.pop('KEY_10')
    codes.update({f'KEY_F{n}': 58 + n for n in range(1, 11)})  # KEY_F1=59 .. KEY_F10=68
    for row, first in (('QWERTYUIOP', 16), ('ASDFGHJKL', 30), ('ZXCVBNM', 44)):
        codes.update({f'KEY_{letter}': first + i for i, letter in enumerate(row)})
    codes.update({f'BTN_{n}': 0x100 + n for n in range(10)})
    return codes


KEY_CODES: dict[str, int] = _key_codes()
"""Key names accepted by :func:`parse_key` (any other code can be given as a number)."""


def parse_key(key: str | int) -> int:
    """A key code from a name (KEY_SPACE, BTN_0, KEY_B; case-insensitive, KEY_ optional) or a number.

    Numbers may be decimal or 0x-prefixed hex (as ``evtest`` prints them). Raises ValueError.
    """
    if isinstance(key, int):
        code = key
    else:
        text = key.strip()
        try:
            code = int(text, 0)
        except ValueError:
            name = text.upper()
            code = KEY_CODES.get(name, KEY_CODES.get(f'KEY_{name}', -1))
            if code < 0:
                raise ValueError(
                    f'unknown key {key!r}: use a number (e.g. 48 or 0x30) or one of {", ".join(sorted(KEY_CODES))}'
                ) from None
    if not 0 <= code <= KEY_MAX:
        raise ValueError(f'key code {code} is outside 0..{KEY_MAX}')
    return code


def key_name(code: int) -> str:
    """The name of `code` in :data:`KEY_CODES`, or the number."""
    for name, value in KEY_CODES.items():
        if value == code:
            return name
    return str(code)


# ------------------------------------------------------------------ keyboard

STOP_KEYS = b' '
RELEASE_KEYS = b'rR'


def keyboard_unavailable_reason(fd: int) -> str | None:
    """Why the terminal on `fd` cannot be used for the e-stop key, or None if it can."""
    if not os.isatty(fd):
        return 'standard input is not a terminal'
    try:
        foreground = os.tcgetpgrp(fd)
    except OSError:
        return None  # not this process's controlling terminal: no job control to stop us
    if foreground != os.getpgrp():
        return "this process is not in the terminal's foreground (started in the background?)"
    return None


def stdin_fd() -> int | None:
    """The file descriptor of ``sys.stdin``, or None where it has none (a test runner's pseudo-file)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


class TerminalReader:
    """Reads a terminal file descriptor in a thread of its own: ``on_bytes(data, now)`` for what each read
    returns, ``on_idle(now)`` after ``idle_s`` without a byte (never with ``idle_s`` None). ``now`` is
    ``time.monotonic()``.

    The one reader of a terminal: the e-stop keys and the recording or takeover keys share it, since two
    readers of one terminal would each get some of the bytes. A terminal is put in cbreak mode without
    echo (Ctrl-C still interrupts) and its previous settings come back on :meth:`close` (also when
    starting fails). The thread ends at end of input, on a read error (a hung-up terminal) or when a
    callback raises; ``closed_reason`` says which.
    """

    def __init__(
        self,
        fd: int,
        on_bytes: Callable[[bytes, float], None],
        *,
        name: str,
        idle_s: float | None = None,
        on_idle: Callable[[float], None] | None = None,
    ) -> None:
        self.fd = fd
        self._on_bytes, self._on_idle, self.idle_s = on_bytes, on_idle, idle_s
        self._saved: list | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.closed_reason: str | None = None

    def start(self) -> TerminalReader:
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
        try:
            if self._saved is not None:
                tty.setcbreak(self.fd, termios.TCSANOW)  # no line buffering, no echo; Ctrl-C still signals
            self._thread.start()
        except BaseException:
            self._restore()
            raise
        return self

    def close(self) -> None:
        """Stop the reader thread and restore the terminal's attributes."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b'x')
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._restore()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _restore(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.fd, self._stop_r], [], [], self.idle_s)
                if self._stop_r in ready:
                    return
                if self.fd not in ready:
                    if self._on_idle is not None:
                        self._on_idle(time.monotonic())
                    continue
                try:
                    data = os.read(self.fd, 256)
                except OSError as exc:  # EIO: the terminal hung up
                    self.closed_reason = f'read failed: {exc}'
                    return
                if not data:
                    self.closed_reason = 'end of input'
                    return
                self._on_bytes(data, time.monotonic())
        except Exception as exc:  # a failing callback ends the reader, loudly, not the process
            self.closed_reason = f'{type(exc).__name__}: {exc}'
            raise


class KeyboardEstop:
    """Space asserts, r releases: read from a terminal in cbreak mode without echo (a :class:`TerminalReader`).

    Use :meth:`open` (None where the fd is not a usable terminal), then :meth:`close`, or use it
    as a context manager. The previous terminal attributes are restored on close.
    """

    def __init__(
        self,
        fd: int,
        callback: EstopCallback,
        *,
        name: str = 'keyboard',
        on_other_key: Callable[[str], None] | None = None,
    ) -> None:
        """`on_other_key(char)`: every other printable key, for a second use of the same terminal (one
        reader per terminal: two would each get some of the bytes). The e-stop keys never reach it."""
        self.fd = fd
        self.name = name
        self._callback = callback
        self._on_other_key = on_other_key
        self._reader = TerminalReader(fd, self._on_bytes, name=f'estop-{name}')
        self.presses = 0

    @classmethod
    def open(
        cls,
        callback: EstopCallback,
        fd: int | None = None,
        *,
        name: str = 'keyboard',
        on_other_key: Callable[[str], None] | None = None,
    ) -> KeyboardEstop | None:
        """Start reading `fd` (default: standard input); None if it is not a usable terminal."""
        fd = stdin_fd() if fd is None else fd
        if fd is None or keyboard_unavailable_reason(fd) is not None:
            return None
        return cls(fd, callback, name=name, on_other_key=on_other_key).start()

    def start(self) -> KeyboardEstop:
        self._reader.start()
        return self

    def close(self) -> None:
        """Stop the reader thread and restore the terminal's attributes."""
        self._reader.close()

    def __enter__(self) -> KeyboardEstop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._reader.running

    @property
    def closed_reason(self) -> str | None:
        return self._reader.closed_reason

    def _on_bytes(self, data: bytes, now: float) -> None:
        for byte in data:
            if byte in STOP_KEYS:
                self.presses += 1
                self._callback(True, f'{self.name} (space)')
            elif byte in RELEASE_KEYS:
                self.presses += 1
                self._callback(False, f'{self.name} ({chr(byte)})')
            elif self._on_other_key is not None and 0x20 < byte < 0x7F:
                self._on_other_key(chr(byte))


# ------------------------------------------------------------------ evdev


@dataclass(frozen=True)
class DeviceStatus:
    """What an :class:`EvdevEstop` knows about its device (given to ``on_status`` on every change)."""

    path: str
    key: str
    mode: str
    state: str = 'opening'
    """opening | open | missing (cannot be opened) | vanished (read error or end of file) | closed"""
    message: str = ''
    pressed: bool | None = None
    """The key's state as last read; None while unknown (device closed, or no EVIOCGKEY and no event yet)."""
    asserting: bool = False
    """Whether this reader currently asserts the e-stop (hold mode: key up, or device gone)."""
    events: int = 0
    """EV_KEY events of the configured key (press, release, autorepeat)."""
    opens: int = 0
    vanished: int = 0
    truncated_bytes: int = 0
    """Bytes of incomplete records discarded when the device went away mid-record."""
    dropped: int = 0
    """SYN_DROPPED reports from the kernel (its event buffer overflowed)."""


class EvdevEstop:
    """Reads a key of an evdev device (or a FIFO carrying input_event records) in a thread."""

    def __init__(
        self,
        path: str,
        callback: EstopCallback,
        *,
        key: str | int = 'KEY_SPACE',
        mode: str = 'latch',
        on_status: Callable[[DeviceStatus], None] | None = None,
        backoff_s: tuple[float, float] = (0.25, 5.0),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f'e-stop device mode must be one of {MODES}, not {mode!r}')
        self.path = path
        self.code = parse_key(key)
        self.mode = mode
        self.name = f'evdev {path} {key_name(self.code)}'
        self._callback = callback
        self._on_status = on_status
        self._backoff = backoff_s
        self._lock = threading.Lock()
        self._status = DeviceStatus(path=path, key=key_name(self.code), mode=mode, asserting=mode == 'hold')
        self._stop = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f'estop-{path}', daemon=True)

    @property
    def asserting(self) -> bool:
        """Whether this reader asserts the e-stop now (only ever true in hold mode)."""
        return self.status.asserting

    @property
    def status(self) -> DeviceStatus:
        with self._lock:
            return self._status

    def start(self) -> EvdevEstop:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b'x')
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> EvdevEstop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- internals

    def _update(self, **changes: object) -> DeviceStatus:
        with self._lock:
            self._status = replace(self._status, **changes)
            return self._status

    def _report(self, **changes: object) -> None:
        status = self._update(**changes)
        if self._on_status is not None:
            self._on_status(status)

    def _set_pressed(self, pressed: bool | None, why: str, **report: object) -> None:
        """Record the key's state; in hold mode assert or release the e-stop when that changes.

        With `report` (more status fields), the status including the new key state goes to
        ``on_status`` before the callback.
        """
        asserting = self.mode == 'hold' and not pressed
        before = self._status.asserting
        if report:
            self._report(pressed=pressed, asserting=asserting, **report)
        else:
            self._update(pressed=pressed, asserting=asserting)
        if self.mode == 'hold' and asserting != before:
            self._callback(asserting, f'{self.name} {why}')

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                message = f'cannot open: {exc}'
                if self._status.state != 'missing' or self._status.message != message:
                    self._set_pressed(None, 'missing', state='missing', message=message)
            else:
                opens = self._status.opens + 1
                self._set_pressed(self._query_pressed(fd), 'held at open', state='open', message='', opens=opens)
                try:
                    received, reason, pending = self._read(fd)
                finally:
                    os.close(fd)  # before reporting: a FIFO writer that opens next meets the next reader
                if received:
                    delay = self._backoff[0]  # it worked for a while: retry soon if it goes again
                if reason:
                    self._vanished(reason, pending)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._backoff[1])
        self._report(state='closed', message='')

    def _query_pressed(self, fd: int) -> bool | None:
        """The key's state from EVIOCGKEY; None where the file is no evdev device (a FIFO)."""
        bitmap = bytearray(_KEY_BITMAP_BYTES)
        try:
            fcntl.ioctl(fd, EVIOCGKEY, bitmap, True)
        except OSError:
            return None
        return bool(bitmap[self.code // 8] >> (self.code % 8) & 1)

    def _read(self, fd: int) -> tuple[bool, str, bytes]:
        """Read records until the device goes or close().

        Returns whether any bytes arrived, why the device went ('' on close()) and the bytes of
        an incomplete record left over.
        """
        pending = b''
        received = False
        while True:
            ready, _, _ = select.select([fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return received, '', pending
            try:
                data = os.read(fd, EVENT_SIZE * 64)
            except BlockingIOError:
                continue
            except OSError as exc:  # ENODEV when unplugged
                return received, f'read failed: {errno.errorcode.get(exc.errno, exc.errno)} {exc.strerror}', pending
            if not data:
                return received, 'end of file', pending
            received = True
            events, pending = decode_events(pending + data)
            for event in events:
                self._handle(event)

    def _vanished(self, reason: str, pending: bytes) -> None:
        self._set_pressed(
            None,
            f'vanished ({reason})',
            state='vanished',
            message=reason + (f', {len(pending)} bytes of an incomplete record discarded' if pending else ''),
            vanished=self._status.vanished + 1,
            truncated_bytes=self._status.truncated_bytes + len(pending),
        )

    def _handle(self, event: InputEvent) -> None:
        if event.type == EV_SYN and event.code == SYN_DROPPED:
            # The kernel lost events: the key's state is unknown until re-read.
            self._update(dropped=self._status.dropped + 1)
            self._set_pressed(None, 'state lost (SYN_DROPPED)')
            return
        if event.type != EV_KEY or event.code != self.code:
            return
        self._update(events=self._status.events + 1)
        if event.value == PRESS:
            if self.mode == 'latch':
                self._update(pressed=True)
                self._callback(True, f'{self.name} pressed')
            else:
                self._set_pressed(True, 'held')
        elif event.value == RELEASE:
            self._set_pressed(False, 'released')


# ------------------------------------------------------------------ combining inputs


class EstopArbiter:
    """The e-stop state from all inputs: a latch (keyboard, latch-mode devices, the topic) or any hold source.

    The latch is set by any assertion and cleared only by a deliberate release (keyboard r, an
    ``estop`` false on the topic). A hold source (a dead-man pedal) asserts while it is up and
    cannot clear the latch. Not thread-safe: the node serialises calls.
    """

    def __init__(self) -> None:
        self.latched = False
        self.holds: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        return self.latched or any(self.holds.values())

    def latch(self, active: bool) -> bool:
        self.latched = active
        return self.active

    def hold(self, name: str, active: bool) -> bool:
        self.holds[name] = active
        return self.active

    def holding(self) -> list[str]:
        return [name for name, active in self.holds.items() if active]
