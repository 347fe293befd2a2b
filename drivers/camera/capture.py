"""Frame capture without ROS: V4L2 devices, video files and a test pattern behind one interface.

Why this module exists separately from the node: capture is where timing and
recovery are decided, and it is easier to get right (and to test) without a ROS
graph around it. The node (``bimanual_vla.drivers.camera.node``) only turns ``Frame`` objects
into messages.

Design decisions, in one place:

* **Capture timestamp.** Every frame carries ``capture_ns`` on ``time.monotonic_ns()``'s
  clock (immune to wall-clock steps; the node maps it into its own clock domain).
  For V4L2 devices we prefer the kernel's buffer timestamp, which OpenCV reports as
  ``CAP_PROP_POS_MSEC`` and which UVC drivers take on CLOCK_MONOTONIC when the frame
  starts arriving: it is earlier and more honest than any user-space time, and it
  stays honest when a frame sat in the driver's queue. We use it only when it is
  plausible (in the past, and less than ``MAX_KERNEL_STAMP_AGE_S`` before the grab),
  otherwise we fall back to the time ``grab()`` returned (the frame was dequeued; the
  decode in ``retrieve()`` comes after the stamp). For video files ``CAP_PROP_POS_MSEC``
  is a position in the media, not a capture time, so a file frame is stamped when it
  is released on its real-time schedule; the test pattern likewise.
* **One copy.** Each frame owns a fresh ``array.array('B')`` buffer. The one
  unavoidable pass over the pixels (BGR to RGB for OpenCV sources, drawing for the
  test pattern) writes straight into that buffer, and the node hands the same
  ``array.array`` to ``sensor_msgs/Image.data``, whose setter stores it without
  copying. Nothing else touches the pixels in Python.
* **Never twice, drops counted.** The capture thread hands frames to a one-slot
  mailbox (:class:`LatestFrame`). A frame that is replaced before the consumer took it
  is counted as *superseded*; frames the source itself skipped (a late test pattern
  or file, a gap between V4L2 timestamps) are counted as *source gaps*. A frame whose
  sequence number or timestamp does not increase is rejected, so no frame is ever
  delivered twice.
* **Recovery.** Bad parameters are found when the capture starts and raise
  :class:`SourceConfigError` with a message meant for the user; a device node that does not
  exist (:class:`DeviceMissing`: unplugged, not enumerated yet) is either that, or, for a rig's
  driver, waited for like an unplugged camera (``start(wait_for_device=True)``). Once running, any
  failure (device unplugged, file renamed away) closes the source and reopens it
  with exponential backoff (capped), reporting the state in :class:`CaptureStats`.
* **Frozen sources.** A real image sensor never delivers two bit-identical frames (sensor
  noise), so a frame identical to the one before it is a device or driver re-delivering an
  old buffer under a new timestamp. Such a frame is never handed out (its stamp would pass
  every staleness check while the scene is old); it is counted as *repeated*. When the image
  has not changed for ``frozen_after_s`` the capture is *frozen*: an event is counted and
  the source is closed and reopened with the same backoff as a failed one, until a frame
  differs again (:class:`FreezeDetector`). The check applies to every source: the test
  pattern never repeats (each frame carries its number), and a video file is a camera
  stand-in, so a still video is frozen to it (``frozen_after_s=0`` turns the check off).
"""

from __future__ import annotations

import array
import math
import os
import stat
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bimanual_vla.config import ConfigError

TEST_PATTERN = 'test_pattern'
MJPG = cv2.VideoWriter_fourcc(*'MJPG')
MAX_KERNEL_STAMP_AGE_S = 1.0
"""A V4L2 buffer timestamp older than this at grab time is not trusted (wrong clock or stale)."""
V4L2_READ_TIMEOUT_MS = 2000
"""A device that delivers nothing for this long counts as failed (OpenCV's default is 10 s)."""
CODE_BITS = 32
MIN_PATTERN_WIDTH = 4 * CODE_BITS
MIN_PATTERN_HEIGHT = 64
FROZEN_AFTER_S = 1.0
"""Default: an image unchanged for this long (identical frames) means the source is frozen."""
SAME_IMAGE_STRIDE = 251
"""Bytes between the samples compared first (prime, so the samples walk every channel and column)."""
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.ogv', '.wmv', '.flv')

_ZERO = array.array('B', [0])


class CaptureError(RuntimeError):
    """Base class of capture failures."""


class SourceConfigError(CaptureError, ConfigError):
    """The source as configured cannot work (unknown device, unsupported size, unreadable file, nonsense)."""


class SourceUnavailable(CaptureError):
    """The source failed while running (unplugged, stalled, file gone); worth retrying."""


class DeviceMissing(SourceConfigError):
    """The camera's device node does not exist: unplugged, or not enumerated yet.

    A configuration error to a caller that wants the camera now (``Capture.start()``); a rig's
    camera driver instead waits for it (``start(wait_for_device=True)``), as for an unplugged camera.
    """


@dataclass(frozen=True, slots=True)
class Frame:
    """One RGB8 image and when it was captured.

    ``data`` is row-major RGB (height * width * 3 bytes) in an ``array.array('B')`` so it
    can go into ``sensor_msgs/Image.data`` without a copy. ``sequence`` is the source's own
    frame number and strictly increases across reconnects and file loops.
    """

    data: array.array
    width: int
    height: int
    sequence: int
    capture_ns: int
    """``time.monotonic_ns()`` clock."""

    @property
    def image(self) -> np.ndarray:
        """A (height, width, 3) uint8 view on ``data`` (no copy)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3)


def new_rgb_buffer(width: int, height: int) -> tuple[array.array, np.ndarray]:
    """A fresh frame buffer and a (height, width, 3) numpy view that writes into it."""
    data = _ZERO * (width * height * 3)  # a memset: cheaper than bytes(n) + copy
    return data, np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def bgr_into(bgr: np.ndarray, view: np.ndarray) -> None:
    """Convert an OpenCV BGR image into ``view`` (RGB) in one pass, with a clear error on size mismatch."""
    if bgr.shape != view.shape:
        raise SourceUnavailable(f'frame has shape {bgr.shape}, expected {view.shape}')
    out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=view)
    if out is not view:  # OpenCV reallocates silently if dst does not fit; we would publish zeros
        raise SourceUnavailable('colour conversion did not write into the frame buffer')


# ----------------------------------------------------------------- frame number code


def _code_geometry(width: int, height: int) -> tuple[int, int]:
    """Cell width and row height of the two-row code strip at the top of a pattern frame."""
    return width // CODE_BITS, max(4, height // 60)


def encode_frame_number(image: np.ndarray, number: int) -> None:
    """Draw ``number`` (32 bits, MSB first) as black/white blocks in the top rows of ``image``.

    Row 1 holds the bits, row 2 their complement, so a decoder can tell a code from an
    arbitrary image and survives mild compression (it samples each block's centre).
    """
    height, width = image.shape[:2]
    cell, row = _code_geometry(width, height)
    bits = (int(number) >> np.arange(CODE_BITS - 1, -1, -1)) & 1
    levels = np.repeat(bits.astype(np.uint8) * 255, cell)
    image[:row, : cell * CODE_BITS] = levels[None, :, None]
    image[row : 2 * row, : cell * CODE_BITS] = (255 - levels)[None, :, None]
    image[: row * 2, cell * CODE_BITS :] = 128


def decode_frame_number(image: np.ndarray) -> int | None:
    """The number drawn by :func:`encode_frame_number`, or None if ``image`` carries no valid code."""
    height, width = image.shape[:2]
    cell, row = _code_geometry(width, height)
    if cell < 2 or height < 2 * row:
        return None
    band = image[: 2 * row, : cell * CODE_BITS].reshape(2 * row, CODE_BITS, cell, -1)
    inner_x = slice(cell // 4, cell - cell // 4)  # block centres: robust to compression at the edges
    inner_y = slice(row // 4, row - row // 4)
    bits = band[inner_y, :, inner_x].mean(axis=(0, 2, 3)) > 127.5
    comp = band[row:][inner_y, :, inner_x].mean(axis=(0, 2, 3)) > 127.5
    if not np.all(bits != comp):
        return None
    return int(bits.astype(np.int64) @ (1 << np.arange(CODE_BITS - 1, -1, -1, dtype=np.int64)))


class TestPatternRenderer:
    """Deterministic moving test pattern: frame ``n`` always renders to the same pixels.

    Colour bars scroll sideways and a square bounces with the frame number, so motion and
    freezes are visible in rviz; the frame number is written as text and as a code strip
    (:func:`decode_frame_number`). Rendering is one window copy plus a few small fills.
    """

    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int, label: str = '') -> None:
        if width < MIN_PATTERN_WIDTH or height < MIN_PATTERN_HEIGHT:
            raise SourceConfigError(
                f'test_pattern needs at least {MIN_PATTERN_WIDTH}x{MIN_PATTERN_HEIGHT} pixels, got {width}x{height}'
            )
        self.width, self.height, self.label = width, height, label
        self._period = max(8, width // 4)
        x = np.arange(width + self._period)
        hue = ((x % self._period) * 180 // self._period).astype(np.uint8)
        hsv = np.empty((1, x.size, 3), np.uint8)
        hsv[..., 0], hsv[..., 1], hsv[..., 2] = hue, 200, 220
        row = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
        shade = np.linspace(0.45, 1.0, height, dtype=np.float32)[:, None, None]
        self._base = np.ascontiguousarray((row[None, :, :] * shade).astype(np.uint8))
        self._square = max(8, min(width, height) // 8)

    def render_into(self, view: np.ndarray, number: int) -> None:
        shift = (number * 4) % self._period
        view[...] = self._base[:, shift : shift + self.width]
        side = self._square
        span_x, span_y = self.width - side, self.height - side - 2 * _code_geometry(self.width, self.height)[1]
        x = _bounce(number * 7, span_x)
        y = _bounce(number * 5, span_y) + 2 * _code_geometry(self.width, self.height)[1]
        view[y : y + side, x : x + side] = 255
        text = f'{self.label} #{number}' if self.label else f'#{number}'
        scale = max(0.4, self.height / 480)
        thickness = max(1, round(1.5 * scale))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x0, y0 = 6, self.height - 6 - base
        view[y0 - th - 4 : y0 + base + 2, x0 - 4 : x0 + tw + 4] = 0
        cv2.putText(view, text, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_8)
        encode_frame_number(view, number)

    def render(self, number: int) -> np.ndarray:
        """A new (height, width, 3) RGB image of frame ``number`` (for tests and file generation)."""
        image = np.empty((self.height, self.width, 3), np.uint8)
        self.render_into(image, number)
        return image


def _bounce(t: int, span: int) -> int:
    if span <= 0:
        return 0
    t %= 2 * span
    return t if t <= span else 2 * span - t


# -------------------------------------------------------------------------- sources


class FrameSource(ABC):
    """A source of RGB frames. ``open`` raises on problems; ``read`` blocks for the next frame.

    Implementations own their pacing (a camera paces itself; files and the pattern sleep
    on ``stop``) and return frames whose ``sequence`` strictly increases across reopenings.
    ``source_gaps`` counts frames the source skipped (it fell behind, or a device lost some).
    """

    width: int
    height: int
    fps: float
    """The rate the source actually runs at (the device's or file's own, after negotiation)."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.requested = (width, height, fps)
        self.source_gaps = 0
        self.notes: list[str] = []
        """Differences from what was requested (fps not available, format not MJPG, ...)."""
        self.stamp_source = 'release_time'
        self._next_sequence = 0
        self.stop = threading.Event()

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def open(self) -> None:
        """Open (or reopen) the source. Raises SourceConfigError or SourceUnavailable."""

    @abstractmethod
    def read(self) -> Frame:
        """Block until the next frame. Raises SourceUnavailable when the source fails."""

    def close(self) -> None:  # noqa: B027 - optional for sources without handles
        """Release handles; safe to call repeatedly."""

    def _sleep_until_ns(self, deadline_ns: int) -> None:
        delay = (deadline_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            self.stop.wait(delay)


class TestPatternSource(FrameSource):
    """The moving test pattern, released on a real-time schedule at ``fps``.

    The frame number drawn into frame k is its sequence number. When the thread falls
    behind (a loaded machine), it skips ahead to the frame that is due now, as a camera
    would, and counts the skipped numbers as source gaps.
    """

    __test__ = False

    def __init__(self, width: int, height: int, fps: float, label: str = '') -> None:
        super().__init__(width, height, fps)
        self.renderer = TestPatternRenderer(width, height, label)
        self._t0_ns = 0
        self._n0 = 0

    @property
    def description(self) -> str:
        return TEST_PATTERN

    def open(self) -> None:
        self._t0_ns = time.monotonic_ns()
        self._n0 = self._next_sequence

    def read(self) -> Frame:
        period_ns = 1e9 / self.fps
        number = self._next_sequence
        due_now = self._n0 + int((time.monotonic_ns() - self._t0_ns) // period_ns)
        if due_now > number:
            self.source_gaps += due_now - number
            number = due_now
        data, view = new_rgb_buffer(self.width, self.height)
        self.renderer.render_into(view, number)
        self._sleep_until_ns(self._t0_ns + int((number - self._n0) * period_ns))
        self._next_sequence = number + 1
        return Frame(data, self.width, self.height, number, time.monotonic_ns())


class VideoFileSource(FrameSource):
    """A video file played at its own frame rate in real time, looped by reopening the path.

    Reopening (rather than seeking) at the end means a file that was renamed away or
    replaced is noticed at the next loop: a missing file becomes a source failure that is
    retried with backoff. Frames decoded late are skipped (counted as source gaps) so
    playback keeps real time on a loaded machine.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        self.path = Path(os.path.expanduser(str(path)))
        self._cap: cv2.VideoCapture | None = None
        self._pending: np.ndarray | None = None
        self._t0_ns = 0
        self._index = 0
        self.loops = 0

    @property
    def description(self) -> str:
        return f'file {self.path}'

    def open(self) -> None:
        self.close()
        path = self.path
        if not path.exists():
            raise SourceConfigError(f'video file {path} not found')
        if not path.is_file():
            raise SourceConfigError(f'video source {path} is not a regular file')
        if not os.access(path, os.R_OK):
            raise SourceConfigError(f'video file {path} is not readable (permission denied)')
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok or first is None:
            cap.release()
            raise SourceConfigError(f'video file {path} cannot be decoded (not a video FFmpeg/OpenCV can read?)')
        height, width = first.shape[:2]
        if (width, height) != (self.width, self.height):
            cap.release()
            raise SourceConfigError(
                f'video file {path} is {width}x{height} but the camera is configured for '
                f'{self.width}x{self.height}; set width/height to match the file'
            )
        file_fps = cap.get(cv2.CAP_PROP_FPS)
        if math.isfinite(file_fps) and 0 < file_fps <= 1000:
            if abs(file_fps - self.requested[2]) > 0.01 and not self.notes:
                self.notes.append(f'file plays at its own {file_fps:g} fps, not the configured {self.requested[2]:g}')
            self.fps = file_fps
        self._cap, self._pending, self._index = cap, first, 0
        self._t0_ns = time.monotonic_ns()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None

    def _decode_next(self) -> np.ndarray | None:
        if self._pending is not None:
            bgr, self._pending = self._pending, None
            return bgr
        assert self._cap is not None
        ok, bgr = self._cap.read()
        return bgr if ok else None

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceUnavailable(f'video file {self.path} is not open')
        period_ns = 1e9 / self.fps
        # More than a frame behind the schedule (a loaded machine): skip frames, grabbing
        # without converting, so playback keeps real time as a camera would.
        behind = int((time.monotonic_ns() - self._t0_ns) // period_ns) - self._index
        while behind > 0 and self._skip_one():
            self._index += 1
            self._next_sequence += 1
            self.source_gaps += 1
            behind -= 1
        bgr = self._decode_next()
        if bgr is None:  # end of file (or a broken tail): loop by reopening the path
            self.loops += 1
            try:
                self.open()
            except SourceConfigError as exc:
                raise SourceUnavailable(str(exc)) from None
            bgr = self._decode_next()
            assert bgr is not None
        data, view = new_rgb_buffer(self.width, self.height)
        bgr_into(bgr, view)
        self._sleep_until_ns(self._t0_ns + int(self._index * period_ns))
        frame = Frame(data, self.width, self.height, self._next_sequence, time.monotonic_ns())
        self._index += 1
        self._next_sequence += 1
        return frame

    def _skip_one(self) -> bool:
        if self._pending is not None:
            self._pending = None
            return True
        return self._cap is not None and self._cap.grab()


def video_devices() -> list[str]:
    """The /dev/video* nodes present, for error messages."""
    return sorted(str(p) for p in Path('/dev').glob('video*'))


class V4L2Source(FrameSource):
    """A V4L2 camera through OpenCV (CAP_V4L2), MJPG requested, size and rate read back.

    A size the device does not deliver is an error (consumers and camera_info expect the
    configured size); a different frame rate or pixel format is reported in ``notes``.
    Source gaps are estimated from the spacing of frame timestamps, since OpenCV does not
    expose the V4L2 sequence counter.
    """

    def __init__(self, device: str | int, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        self.device = f'/dev/video{device}' if isinstance(device, int) else os.path.expanduser(device)
        self._cap: cv2.VideoCapture | None = None
        self._last_ns: int | None = None
        self.stamp_source = 'grab_time'

    @property
    def description(self) -> str:
        return f'v4l2 {self.device}'

    def _check_device_node(self) -> None:
        path = self.device
        if not os.path.exists(path):
            present = ', '.join(video_devices()) or 'none'
            raise DeviceMissing(f'camera device {path} does not exist (video devices present: {present})')
        if not stat.S_ISCHR(os.stat(path).st_mode):
            raise SourceConfigError(f'{path} is not a character device (expected a V4L2 node like /dev/video0)')
        if not os.access(path, os.R_OK | os.W_OK):
            raise SourceConfigError(f'no permission to open {path}: add the user to the "video" group')

    def open(self) -> None:
        self.close()
        self._check_device_node()
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise SourceUnavailable(f'OpenCV could not open {self.device} (busy in another process, or not a camera?)')
        want_w, want_h, want_fps = self.requested
        cap.set(cv2.CAP_PROP_FOURCC, MJPG)
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, want_w)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, want_h)
        cap.set(cv2.CAP_PROP_FPS, want_fps)
        if hasattr(cv2, 'CAP_PROP_READ_TIMEOUT_MSEC'):
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, V4L2_READ_TIMEOUT_MS)
        got_w, got_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        got_fps = cap.get(cv2.CAP_PROP_FPS)
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        if (got_w, got_h) != (want_w, want_h):
            cap.release()
            raise SourceConfigError(
                f'{self.device} does not support {want_w}x{want_h} (it set {got_w}x{got_h}); '
                f'list its modes with `v4l2-ctl -d {self.device} --list-formats-ext`'
            )
        notes = []
        if fourcc != MJPG:
            name = fourcc.to_bytes(4, 'little').decode('ascii', 'replace')
            notes.append(f'pixel format {name!r} instead of MJPG (USB bandwidth may limit several cameras)')
        if got_fps > 0 and abs(got_fps - want_fps) > 0.01:
            notes.append(f'device runs at {got_fps:g} fps, not the requested {want_fps:g}')
            self.fps = got_fps
        self.notes = notes
        self._cap, self._last_ns = cap, None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> Frame:
        cap = self._cap
        if cap is None:
            raise SourceUnavailable(f'{self.device} is not open')
        if not cap.grab():
            raise SourceUnavailable(f'{self.device}: no frame (unplugged, or stalled for {V4L2_READ_TIMEOUT_MS} ms)')
        grab_ns = time.monotonic_ns()
        capture_ns = self._choose_stamp(grab_ns, cap.get(cv2.CAP_PROP_POS_MSEC))
        data, view = new_rgb_buffer(self.width, self.height)
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            raise SourceUnavailable(f'{self.device}: could not decode a frame')
        bgr_into(bgr, view)
        if self._last_ns is not None and self.fps > 0:
            missed = round((capture_ns - self._last_ns) * self.fps / 1e9) - 1
            self.source_gaps += max(0, missed)
            self._next_sequence += max(0, missed)
        self._last_ns = capture_ns
        frame = Frame(data, self.width, self.height, self._next_sequence, capture_ns)
        self._next_sequence += 1
        return frame

    def _choose_stamp(self, grab_ns: int, pos_msec: float) -> int:
        """Kernel buffer time (CLOCK_MONOTONIC on UVC) when plausible, else the time grab() returned."""
        if math.isfinite(pos_msec) and pos_msec > 0:
            kernel_ns = int(pos_msec * 1e6)
            if 0 <= grab_ns - kernel_ns <= MAX_KERNEL_STAMP_AGE_S * 1e9:
                self.stamp_source = 'v4l2_buffer'
                return kernel_ns
        self.stamp_source = 'grab_time'
        return grab_ns


def make_source(source: str | int, width: int, height: int, fps: float, label: str = '') -> FrameSource:
    """The FrameSource a config ``source`` names; raises SourceConfigError for nonsense.

    ``source`` is ``test_pattern``, a V4L2 device index (``0`` or ``"0"``) or path
    (``/dev/video0``, ``/dev/v4l/by-id/...``), or a video file path.
    """
    if width <= 0 or height <= 0 or not (math.isfinite(fps) and fps > 0):
        raise SourceConfigError(f'invalid capture size/rate {width}x{height}@{fps}')
    if isinstance(source, bool):
        raise SourceConfigError(f'camera source must be a device, file or {TEST_PATTERN!r}, got {source!r}')
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        index = int(source)
        return V4L2Source(index, width, height, fps)
    text = str(source).strip()
    if not text:
        raise SourceConfigError('camera source is empty')
    if text == TEST_PATTERN:
        return TestPatternSource(width, height, fps, label)
    if text.startswith('/dev/'):
        return V4L2Source(text, width, height, fps)
    path = Path(os.path.expanduser(text))
    if path.suffix.lower() in VIDEO_SUFFIXES or os.sep in text or path.exists():
        return VideoFileSource(path, width, height, fps)
    raise SourceConfigError(
        f'camera source {text!r} is not a V4L2 device (/dev/videoN or an index), '
        f'a video file ({", ".join(VIDEO_SUFFIXES[:4])}, ...) or {TEST_PATTERN!r}'
    )


# ------------------------------------------------------------------ the capture thread


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat uint8 frames are bit-identical.

    A strided sample first (about 3,700 bytes of a 640x480 frame): changing images differ there,
    so they cost microseconds; only a match is confirmed by comparing every byte.
    """
    if a.shape != b.shape:
        return False
    return bool(np.array_equal(a[::SAME_IMAGE_STRIDE], b[::SAME_IMAGE_STRIDE]) and np.array_equal(a, b))


class FreezeDetector:
    """How long a source has been returning one image (bit-identical consecutive frames).

    ``check(frame, now_ns)`` compares ``frame`` with the previous one and says whether it repeats
    it; ``expired(now_ns)`` whether the image has now been repeated for ``frozen_after_s``, timed
    from when it was first seen. ``restart_timer(now_ns)`` starts a new period (after a reopen)
    while still comparing with the last image, so a source that comes back with the same image
    stays in the run and expires again a period later. ``frozen_after_s=0`` disables it: nothing
    repeats, nothing expires.
    """

    def __init__(self, frozen_after_s: float = FROZEN_AFTER_S) -> None:
        if not (math.isfinite(frozen_after_s) and frozen_after_s >= 0):
            raise ValueError(f'frozen_after_s must be >= 0 (0 disables), got {frozen_after_s}')
        self.frozen_after_s = frozen_after_s
        self._after_ns = int(frozen_after_s * 1e9)
        self._previous: np.ndarray | None = None
        self._seen_ns = 0
        """When the current image was first seen."""
        self._period_ns = 0
        """Start of the period ``expired`` measures: ``_seen_ns``, or the last ``restart_timer``."""
        self.run = 0
        """Identical frames in a row (0 after a frame that differs)."""

    @property
    def enabled(self) -> bool:
        return self._after_ns > 0

    def check(self, frame: Frame, now_ns: int) -> bool:
        """True if ``frame`` is bit-identical to the frame checked before it."""
        if not self.enabled:
            return False
        pixels = np.frombuffer(frame.data, dtype=np.uint8)
        previous, self._previous = self._previous, pixels
        if previous is None or not same_image(pixels, previous):
            self._seen_ns = self._period_ns = now_ns
            self.run = 0
            return False
        self.run += 1
        return True

    def unchanged_s(self, now_ns: int) -> float:
        """Seconds since the repeated image was first seen (0 while the image changes)."""
        return (now_ns - self._seen_ns) / 1e9 if self.run else 0.0

    def expired(self, now_ns: int) -> bool:
        return self.run > 0 and now_ns - self._period_ns >= self._after_ns

    def restart_timer(self, now_ns: int) -> None:
        self._period_ns = now_ns


class LatestFrame:
    """A one-frame mailbox between the capture thread and the publisher.

    ``put`` replaces an untaken frame (counted in ``superseded``); ``take`` hands each frame
    out at most once. Frames whose sequence or timestamp does not increase are rejected.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._last: tuple[int, int] | None = None
        self.superseded = 0
        self.rejected = 0

    def put(self, frame: Frame) -> bool:
        with self._cond:
            if self._last is not None and (frame.sequence <= self._last[0] or frame.capture_ns <= self._last[1]):
                self.rejected += 1
                return False
            self._last = (frame.sequence, frame.capture_ns)
            if self._frame is not None:
                self.superseded += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class CaptureStats:
    """A snapshot of the capture's health, for diagnostics."""

    state: str
    """starting | waiting (no device yet) | streaming | reconnecting | frozen | stopped"""
    source: str
    frames_captured: int
    superseded: int
    source_gaps: int
    rejected: int
    reconnects: int
    failures: int
    last_error: str
    stamp_source: str
    width: int
    height: int
    fps: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    frozen_events: int = 0
    """Times the source went from delivering to frozen (one per event, however many reopens it takes)."""
    repeated_frames: int = 0
    """Frames identical to the one before them, withheld (not counted in ``dropped``)."""
    frozen_after_s: float = FROZEN_AFTER_S

    @property
    def dropped(self) -> int:
        return self.superseded + self.source_gaps


class Capture:
    """Runs a FrameSource in its own thread, feeding a :class:`LatestFrame`, and recovers from failures.

    ``start()`` opens the source in the caller's thread, so bad parameters raise right
    there. Afterwards a failing source is closed and reopened with exponential backoff
    (``backoff_initial_s`` doubling up to ``backoff_max_s``) until it works again; the
    backoff starts over once a frame is delivered. A frame identical to the one before it is
    withheld, and a source whose image has not changed for ``frozen_after_s`` (0: never) is
    *frozen*: closed and reopened the same way, until a frame differs.
    """

    def __init__(
        self,
        source: FrameSource,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        frozen_after_s: float = FROZEN_AFTER_S,
    ) -> None:
        if not (0 < backoff_initial_s <= backoff_max_s):
            raise ValueError('need 0 < backoff_initial_s <= backoff_max_s')
        self.source = source
        self.frames = LatestFrame()
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.freeze = FreezeDetector(frozen_after_s)
        self._frozen_events = 0
        self._repeated = 0
        self._lock = threading.Lock()
        self._state = 'starting'
        self._captured = 0
        self._reconnects = 0
        self._failures = 0
        self._last_error = ''
        self._thread: threading.Thread | None = None

    def start(self, wait_for_device: bool = False) -> None:
        """Open the source here (bad parameters raise) and start the capture thread.

        ``wait_for_device``: a camera whose device node does not exist yet is not an error but
        state ``waiting``: the thread keeps trying to open it with the usual backoff.
        """
        try:
            self.source.open()
        except DeviceMissing as exc:
            if not wait_for_device:
                raise
            self.source.close()
            with self._lock:
                self._state, self._last_error = 'waiting', f'{type(exc).__name__}: {exc}'
                self._failures += 1
        else:
            self._set(state='streaming')
        self._thread = threading.Thread(target=self._run, name=f'capture {self.source.description}', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self.source.stop.set()
        self.frames.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self.source.close()
        self._set(state='stopped')

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> CaptureStats:
        src = self.source
        with self._lock:
            return CaptureStats(
                state=self._state,
                source=src.description,
                frames_captured=self._captured,
                superseded=self.frames.superseded,
                source_gaps=src.source_gaps,
                rejected=self.frames.rejected,
                reconnects=self._reconnects,
                failures=self._failures,
                last_error=self._last_error,
                stamp_source=src.stamp_source,
                width=src.width,
                height=src.height,
                fps=src.fps,
                notes=tuple(src.notes),
                frozen_events=self._frozen_events,
                repeated_frames=self._repeated,
                frozen_after_s=self.freeze.frozen_after_s,
            )

    def _set(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, f'_{key}', value)

    def _run(self) -> None:
        src, stop = self.source, self.source.stop
        delay = self.backoff_initial_s
        if self.stats().state == 'waiting':
            delay = self._reopen(delay)
        while not stop.is_set():
            try:
                frame = src.read()
            except Exception as exc:  # any failure of a running source is retried, never fatal
                if stop.is_set():
                    break
                src.close()
                with self._lock:
                    self._state, self._last_error = 'reconnecting', f'{type(exc).__name__}: {exc}'
                    self._failures += 1
                delay = self._reopen(delay)
                continue
            now_ns = time.monotonic_ns()
            if self.freeze.check(frame, now_ns):
                with self._lock:
                    self._repeated += 1
                if self.freeze.expired(now_ns):
                    delay = self._frozen(delay, now_ns)
                continue
            with self._lock:
                if self._state == 'frozen':
                    self._state = 'streaming'
            if self.frames.put(frame):
                with self._lock:
                    self._captured += 1
            delay = self.backoff_initial_s

    def _frozen(self, delay: float, now_ns: int) -> float:
        """The image has not changed for ``frozen_after_s``: count the event, close, reopen with backoff."""
        detector = self.freeze
        with self._lock:
            if self._state != 'frozen':
                self._frozen_events += 1
                self._state = 'frozen'
            self._last_error = (
                f'frozen: the same image for {detector.unchanged_s(now_ns):.1f} s ({detector.run} identical frames)'
            )
        self.source.close()
        delay = self._reopen(delay, state='frozen')
        detector.restart_timer(time.monotonic_ns())
        return delay

    def _reopen(self, delay: float, state: str = 'streaming') -> float:
        """Retry ``open`` with capped exponential backoff until it works or we are stopped.

        Returns the delay before the next reopen: doubled, so a source that opens but fails (or
        stays frozen) again is retried less and less often until a delivered frame resets it.
        """
        src, stop = self.source, self.source.stop
        while not stop.wait(delay):
            delay = min(delay * 2, self.backoff_max_s)
            try:
                src.open()
            except Exception as exc:
                src.close()
                with self._lock:
                    self._last_error = f'{type(exc).__name__}: {exc}'
                    self._failures += 1
                continue
            with self._lock:
                self._state = state
                self._reconnects += 1
            return delay
        return delay
