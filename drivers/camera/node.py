"""The ``camera_driver`` node: one camera of a rig, published as sensor_msgs/Image (rgb8) + CameraInfo.

Capture (devices, files, test pattern, timing, recovery) lives in ``bimanual_vla.drivers.camera.capture``;
this node only maps frames into messages and reports health. Parameters:

* ``rig`` (required): rig YAML path or shipped rig name.
* ``camera`` (required): the camera's name in the rig (``base``, ``left_wrist``, ...).
* ``source`` (optional): overrides the rig's source (``test_pattern``, ``/dev/video2``, ``2``, a video file).
  A device that does not exist yet (camera unplugged) is not an error: the node says so once in its
  log, reports it on ``/diagnostics`` (ERROR, state ``waiting``) and opens it once it appears.
* ``camera_info_file`` (optional): calibration YAML in the camera_calibration_parsers format;
  without it CameraInfo carries the size and all-zero intrinsics (ROS's "uncalibrated").
* ``reconnect_initial_s`` / ``reconnect_max_s``: backoff between reopen attempts after a failure.
* ``frozen_after_s`` (1.0; 0 disables): a camera whose image has not changed (bit-identical frames)
  for this long is frozen: reported as an ERROR and reopened like a failed one. Identical frames are
  never published, so consumers see the camera go stale at once (``bimanual_vla.drivers.camera.capture``,
  Frozen sources).
* ``jpeg_quality`` (80, 1-100): each frame also goes out as JPEG on ``image_raw/compressed``
  (sensor_msgs/CompressedImage, image_transport's name), for a policy on another computer; it is
  encoded only while that topic has a subscriber.

``header.stamp`` is the capture time in the node's clock domain: the capture thread stamps
frames on the monotonic clock, and at publish time the frame's age is subtracted from the
node clock's ``now()``. That is exact for the system clock and correct for ``use_sim_time``
(a frame is stamped at the simulated time it was taken); while no ``/clock`` has arrived
(sim time 0) frames are not published, and diagnostics say so.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from bimanual_vla import topics
from bimanual_vla.config import Bound, CameraConfig, ConfigError, check_override
from bimanual_vla.drivers.camera.capture import FROZEN_AFTER_S, Capture, CaptureError, CaptureStats, Frame, make_source
from bimanual_vla.image_msgs import JPEG_QUALITY, CompressedPublisher, check_jpeg_quality
from bimanual_vla.ros_utils import ERROR, OK, WARN, declare_rig, diagnostic_status, run_node

DIAGNOSTICS_PERIOD_S = 1.0
STATE_POLL_S = 0.1
LOW_RATE_FRACTION = 0.8
"""Achieved rate below this fraction of the source's rate is reported as a warning."""
FROZEN_AFTER_S_BOUND = Bound(0.0, 10.0, 's', low_inclusive=True)
"""0 disables the check; a freeze reported (and reopened) later than 10 s helps nobody."""


class CameraDriver(Node):
    """Publishes one camera of the rig; see the module docstring for parameters."""

    def __init__(self, node_name: str = 'camera_driver', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Set first: rclpy destroys a half-constructed node at context shutdown.
        self._stop = threading.Event()
        self._capture: Capture | None = None
        self._thread: threading.Thread | None = None
        rig = declare_rig(self)
        name = self.declare_parameter('camera', '').get_parameter_value().string_value
        if not name:
            raise ConfigError(
                f'node {self.get_name()}: parameter "camera" is required; rig {rig.name!r} has cameras '
                f'{[c.name for c in rig.cameras]}'
            )
        cam = rig.camera(name)
        override = self.declare_parameter('source', '', ParameterDescriptor(dynamic_typing=True)).value
        if override not in ('', None):
            cam = cam.model_copy(update={'source': str(override)})
        info_file = self.declare_parameter('camera_info_file', '').get_parameter_value().string_value
        backoff_initial = self.declare_parameter('reconnect_initial_s', 0.25).get_parameter_value().double_value
        backoff_max = self.declare_parameter('reconnect_max_s', 5.0).get_parameter_value().double_value
        if not (0 < backoff_initial <= backoff_max):
            raise ConfigError(f'need 0 < reconnect_initial_s ({backoff_initial}) <= reconnect_max_s ({backoff_max})')
        frozen_after_s = check_override(
            f'node {self.get_name()}',
            'frozen_after_s',
            self.declare_parameter('frozen_after_s', FROZEN_AFTER_S, ParameterDescriptor(dynamic_typing=True)).value,
            FROZEN_AFTER_S_BOUND,
        )
        quality = self.declare_parameter('jpeg_quality', JPEG_QUALITY).value
        quality = check_jpeg_quality(f'node {self.get_name()}', quality)

        self.camera: CameraConfig = cam
        # check_fields=True makes the generated setter keep an array.array('B') as is; with the default
        # (False) it wraps every assignment in array.array(...), a full Python copy per frame.
        self._image = Image(
            check_fields=True, encoding='rgb8', is_bigendian=0, width=cam.width, height=cam.height, step=cam.width * 3
        )
        self._image.header.frame_id = topics.camera_frame(cam.name)
        self._info = load_camera_info(info_file, cam) if info_file else uncalibrated_camera_info(cam)
        self._info.header.frame_id = self._image.header.frame_id

        # Bad parameters (unsupported size, unreadable file, nonsense) raise here. A device node that does
        # not exist (camera unplugged at start) is waited for: the rest of the rig runs meanwhile.
        source = make_source(cam.source, cam.width, cam.height, cam.fps, label=cam.name)
        capture = Capture(
            source, backoff_initial_s=backoff_initial, backoff_max_s=backoff_max, frozen_after_s=frozen_after_s
        )
        capture.start(wait_for_device=True)
        self._capture = capture

        self._image_pub = self.create_publisher(Image, topics.camera_image(cam.name), topics.SENSOR_QOS)
        self._info_pub = self.create_publisher(CameraInfo, topics.camera_info(cam.name), topics.SENSOR_QOS)
        self._compressed = CompressedPublisher(
            self.create_publisher(CompressedImage, topics.camera_image_compressed(cam.name), topics.SENSOR_QOS), quality
        )
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)

        self._lock = threading.Lock()
        self._published = 0
        self._waiting_for_clock = 0
        self._latency_sum_ns = 0
        self._window = (time.monotonic(), 0, 0, 0)  # (t, published, captured, latency_sum_ns) at last report
        self._last_state = capture.stats().state
        self._outage_started = time.monotonic()
        self._frozen_events_logged = 0
        self._last_diag = 0.0
        self._thread = threading.Thread(target=self._publish_loop, name=f'publish {cam.name}', daemon=True)
        self._thread.start()
        self.create_timer(STATE_POLL_S, self._poll_state)
        stats = capture.stats()
        if stats.state == 'waiting':
            self.get_logger().error(
                f'camera {cam.name}: {stats.last_error.removeprefix("DeviceMissing: ")}; retrying until it appears'
            )
        self.get_logger().info(
            f'camera {cam.name}: {stats.source}, {stats.width}x{stats.height} @ {stats.fps:g} fps '
            f'-> {self._image_pub.topic_name}'
        )
        for note in stats.notes:
            self.get_logger().warning(f'camera {cam.name}: {note}')

    # ----------------------------------------------------------------- publishing

    def _publish_loop(self) -> None:
        frames = self._capture.frames
        while not self._stop.is_set():
            frame = frames.take(timeout=0.2)
            if frame is None or self._stop.is_set():
                continue
            try:
                self._publish(frame)
            except Exception as exc:  # context shut down under us, or a broken publisher
                if self._stop.is_set() or not self.context.ok():
                    return
                self.get_logger().error(f'publishing a frame failed: {exc}', throttle_duration_sec=5.0)

    def _publish(self, frame: Frame) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if now_ns == 0:  # use_sim_time and no /clock yet: there is no honest stamp to give
            with self._lock:
                self._waiting_for_clock += 1
            return
        age_ns = time.monotonic_ns() - frame.capture_ns
        stamp_ns = max(0, now_ns - age_ns)
        stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        msg = self._image
        msg.header.stamp = stamp
        msg.data = frame.data  # array.array('B'): stored as is (check_fields), copied once in C at publish
        self._image_pub.publish(msg)
        self._info.header.stamp = stamp
        self._info_pub.publish(self._info)
        pixels = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
        self._compressed.publish(pixels, msg.header)  # encodes only if someone subscribes
        with self._lock:
            self._published += 1
            self._latency_sum_ns += age_ns

    # ---------------------------------------------------------------- diagnostics

    def _poll_state(self) -> None:
        """Publish diagnostics every second, and at once when the capture state changes."""
        stats = self._capture.stats()
        now = time.monotonic()
        name = self.camera.name
        # Once per freeze event, counted by the capture thread, so a freeze is logged even if it
        # began and ended between two polls.
        if stats.frozen_events > self._frozen_events_logged:
            self._frozen_events_logged = stats.frozen_events
            self.get_logger().error(
                f'camera {name}: {stats.last_error or "frozen"} (event {stats.frozen_events}); '
                'not publishing, reopening the source'
            )
        if stats.state != self._last_state:
            if stats.state in ('reconnecting', 'frozen'):
                self._outage_started = now
                if stats.state == 'reconnecting':
                    self.get_logger().error(f'camera {name}: source failed ({stats.last_error}); reconnecting')
            elif stats.state == 'streaming':
                what = {'frozen': 'images change again', 'waiting': 'device appeared'}.get(
                    self._last_state, 'source back'
                )
                self.get_logger().info(
                    f'camera {name}: {what} after {now - self._outage_started:.1f} s '
                    f'({stats.reconnects} reconnect(s) so far)'
                )
            self._last_state = stats.state
        elif now - self._last_diag < DIAGNOSTICS_PERIOD_S:
            return
        self._last_diag = now
        self._publish_diagnostics(stats, now)

    def _publish_diagnostics(self, stats: CaptureStats, now: float) -> None:
        with self._lock:
            published, waiting, latency_sum = self._published, self._waiting_for_clock, self._latency_sum_ns
        t0, published0, captured0, latency0 = self._window
        dt = max(now - t0, 1e-6)
        achieved = (published - published0) / dt
        capture_rate = (stats.frames_captured - captured0) / dt
        n = published - published0
        latency_ms = (latency_sum - latency0) / n / 1e6 if n else float('nan')
        self._window = (now, published, stats.frames_captured, latency_sum)

        if stats.state == 'waiting':
            level, message = ERROR, f'no camera: {stats.last_error.removeprefix("DeviceMissing: ")}; retrying'
        elif stats.state == 'reconnecting':
            level, message = ERROR, f'source failed, reconnecting: {stats.last_error}'
        elif stats.state == 'frozen':
            level, message = ERROR, f'{stats.last_error}: not publishing, reopening the source'
        elif waiting and n == 0:
            level, message = WARN, 'use_sim_time is set and no /clock has arrived: not publishing'
        elif dt > 0.5 and achieved < LOW_RATE_FRACTION * stats.fps:
            level, message = WARN, f'low frame rate: {achieved:.1f} of {stats.fps:g} fps'
        elif stats.notes:
            level, message = WARN, '; '.join(stats.notes)
        else:
            level, message = OK, 'streaming'
        values = {
            'state': stats.state,
            'source': stats.source,
            'resolution': f'{stats.width}x{stats.height}',
            'configured_fps': float(self.camera.fps),
            'source_fps': float(stats.fps),
            'achieved_fps': achieved,
            'capture_fps': capture_rate,
            'frames_published': published,
            'dropped_frames': stats.dropped,
            'dropped_superseded': stats.superseded,
            'dropped_source_gaps': stats.source_gaps,
            'rejected_frames': stats.rejected,
            'waiting_for_clock': waiting,
            'reconnects': stats.reconnects,
            'failures': stats.failures,
            'frozen_events': stats.frozen_events,
            'repeated_frames': stats.repeated_frames,
            'frozen_after_s': stats.frozen_after_s,
            'last_error': stats.last_error,
            'stamp_source': stats.stamp_source,
            'capture_to_publish_ms': latency_ms,
            'compressed_published': self._compressed.published,
            'compressed_bytes_mean': self._compressed.bytes / max(1, self._compressed.published),
            'notes': '; '.join(stats.notes),
        }
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(
            diagnostic_status(f'{self.get_name()}: camera {self.camera.name}', level, message, values, stats.source)
        )
        self._diag_pub.publish(array)

    # ------------------------------------------------------------------ lifecycle

    def capture_stats(self) -> CaptureStats:
        assert self._capture is not None
        return self._capture.stats()

    def destroy_node(self) -> None:
        self._stop.set()
        if self._capture is not None:
            self._capture.stop()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        super().destroy_node()


# ------------------------------------------------------------------- camera_info


def uncalibrated_camera_info(cam: CameraConfig) -> CameraInfo:
    """Size only; K, P all zero: ROS's convention for a camera without calibration."""
    return CameraInfo(width=cam.width, height=cam.height, distortion_model='')


def _matrix(data: dict[str, Any], key: str, rows: int, cols: int, path: Path) -> list[float]:
    entry = data.get(key)
    values = entry.get('data') if isinstance(entry, dict) else entry
    if not isinstance(values, list) or len(values) != rows * cols:
        raise ConfigError(f'{path}: {key}: expected {rows}x{cols} = {rows * cols} numbers')
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f'{path}: {key}: not all numbers') from None


def load_camera_info(path_text: str, cam: CameraConfig) -> CameraInfo:
    """Read a calibration YAML (camera_calibration_parsers format, as written by camera_calibration)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f'{path}: camera_info_file not found')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping with image_width, camera_matrix, ...')
    size = (data.get('image_width'), data.get('image_height'))
    if size != (cam.width, cam.height):
        raise ConfigError(f'{path}: calibrated for {size[0]}x{size[1]}, camera {cam.name} is {cam.width}x{cam.height}')
    distortion = data.get('distortion_coefficients', {})
    d = distortion.get('data') if isinstance(distortion, dict) else distortion
    if not isinstance(d, list):
        raise ConfigError(f'{path}: distortion_coefficients: expected a list of numbers')
    info = CameraInfo(width=cam.width, height=cam.height)
    info.distortion_model = str(data.get('distortion_model', 'plumb_bob'))
    info.d = [float(v) for v in d]
    info.k = _matrix(data, 'camera_matrix', 3, 3, path)
    info.r = _matrix(data, 'rectification_matrix', 3, 3, path) if 'rectification_matrix' in data else info.r
    info.p = _matrix(data, 'projection_matrix', 3, 4, path)
    return info


# --------------------------------------------------------------------------- main


def main(args: list[str] | None = None) -> int:
    return run_node('camera_driver', CameraDriver, args, startup_errors=(ConfigError, CaptureError))


if __name__ == '__main__':
    sys.exit(main())
