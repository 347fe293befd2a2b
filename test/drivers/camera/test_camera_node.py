"""camera_driver through a real rclpy subscriber over Fast DDS: content, order, stamps, recovery, bad parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, resolve_rig_path
from bimanual_vla.drivers.camera.capture import CaptureError, TestPatternRenderer, decode_frame_number

pytestmark = pytest.mark.ros

W, H, FPS = 160, 120, 30.0


def write_video(path: Path, images: list[np.ndarray], fps: float = FPS) -> list[np.ndarray]:
    """A lossless (FFV1) video of RGB ``images``, so decoding gives them back byte for byte."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'FFV1'), fps, (W, H))
    assert writer.isOpened(), 'OpenCV cannot write FFV1'
    for rgb in images:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return images


def write_pattern_video(path: Path, frames: int, fps: float = FPS, label: str = 'file') -> list[np.ndarray]:
    """A lossless (FFV1) video of test-pattern frames 0..frames-1; returns the RGB frames written."""
    renderer = TestPatternRenderer(W, H, label)
    return write_video(path, [renderer.render(n) for n in range(frames)], fps)


def _pixels(msg) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)


@pytest.fixture
def rig_file(tmp_path: Path) -> Path:
    """The shipped so101 rig with small cameras, so tests stay light on a loaded machine."""
    data = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    data['cameras'] = [
        {'name': 'base', 'source': 'test_pattern', 'width': W, 'height': H, 'fps': FPS},
        {'name': 'left_wrist', 'source': '/dev/video98', 'width': W, 'height': H, 'fps': FPS},
        {'name': 'big', 'source': 'test_pattern', 'width': 320, 'height': 240, 'fps': FPS},
    ]
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


class Harness:
    """A CameraDriver and a subscriber node (images, camera_info, diagnostics) in one executor."""

    def __init__(self, context, spin, params: dict[str, object]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CameraInfo, Image

        from bimanual_vla.drivers.camera.node import CameraDriver

        self.spin_until = spin
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.driver = CameraDriver(context=context, parameter_overrides=overrides)
        cam = self.driver.camera.name
        self.listener = Node('camera_test_listener', context=context)
        self.images: list[tuple[float, Image]] = []
        self.infos: list[CameraInfo] = []
        self.diags: list[dict[str, str]] = []
        self.listener.create_subscription(
            Image, topics.camera_image(cam), lambda m: self.images.append((time.monotonic(), m)), topics.SENSOR_QOS
        )
        self.listener.create_subscription(CameraInfo, topics.camera_info(cam), self.infos.append, topics.SENSOR_QOS)
        self.listener.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diag, topics.DIAGNOSTICS_QOS)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.driver)
        self.executor.add_node(self.listener)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(self.driver.get_name()):
                entry = {kv.key: kv.value for kv in status.values}
                entry['_level'] = str(status.level[0] if isinstance(status.level, bytes) else status.level)
                entry['_message'] = status.message
                self.diags.append(entry)

    def spin(self, predicate, timeout: float = 20.0) -> bool:
        return self.spin_until(self.executor, predicate, timeout)

    def close(self) -> None:
        self.executor.shutdown()
        self.driver.destroy_node()
        self.listener.destroy_node()


@pytest.fixture
def harness(ros_context, spin):
    made: list[Harness] = []

    def make(**params: object) -> Harness:
        h = Harness(ros_context, spin, params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_test_pattern_arrives_exact_in_order_with_capture_stamps(harness, rig_file: Path) -> None:
    h = harness(rig=str(rig_file), camera='base')
    start_ns = h.driver.get_clock().now().nanoseconds
    published = lambda: [d for d in h.diags if int(d['frames_published']) > 0]  # noqa: E731
    assert h.spin(lambda: len(h.images) >= 12 and published()), f'{len(h.images)} images, diagnostics {h.diags}'
    end_ns = h.driver.get_clock().now().nanoseconds
    renderer = TestPatternRenderer(W, H, 'base')
    numbers, stamps = [], []
    for _, msg in h.images:
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', W, H, W * 3)
        assert msg.header.frame_id == 'base_optical_frame'
        image = np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)
        number = decode_frame_number(image)
        assert number is not None
        np.testing.assert_array_equal(image, renderer.render(number))
        numbers.append(number)
        stamps.append(_stamp(msg))
    assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False)), numbers
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), 'stamps not strictly increasing'
    assert start_ns - 1_000_000_000 < stamps[0] and stamps[-1] <= end_ns
    # Stamps are capture times: spaced by the pattern's schedule (1/30 s per frame number), not by arrival.
    spacing = (stamps[-1] - stamps[0]) / (numbers[-1] - numbers[0])
    assert 0.5e9 / FPS < spacing < 3e9 / FPS
    info_stamps = {_stamp(i) for i in h.infos}
    assert info_stamps & set(stamps), 'camera_info does not share stamps with the images'
    info = h.infos[-1]
    assert (info.width, info.height, info.header.frame_id) == (W, H, 'base_optical_frame')
    diag = published()[-1]
    assert diag['state'] == 'streaming' and diag['source'] == 'test_pattern' and diag['resolution'] == f'{W}x{H}'
    assert int(diag['frames_published']) > 0 and int(diag['reconnects']) == 0
    assert int(diag['dropped_frames']) == int(diag['dropped_superseded']) + int(diag['dropped_source_gaps'])
    assert (diag['frozen_events'], diag['repeated_frames'], diag['frozen_after_s']) == ('0', '0', '1')


def test_video_file_is_published_in_order_with_its_content(harness, rig_file: Path, tmp_path: Path) -> None:
    path = tmp_path / 'clip.avi'
    written = write_pattern_video(path, frames=10, fps=FPS)
    # Frozen after two frame periods of one image: a file of changing frames must never trip it.
    h = harness(rig=str(rig_file), camera='base', source=str(path), frozen_after_s=0.07)
    assert h.spin(lambda: len(h.images) >= 15 and any(int(d['frames_published']) >= 15 for d in h.diags)), (
        f'only {len(h.images)} images'
    )
    assert all((d['state'], d['frozen_events'], d['repeated_frames']) == ('streaming', '0', '0') for d in h.diags)
    numbers = []
    for _, msg in h.images:
        image = np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)
        number = decode_frame_number(image)
        assert number is not None and 0 <= number < 10
        np.testing.assert_array_equal(image, written[number])
        numbers.append(number)
    # In file order, looping back to the start: each step goes forward (mod 10), never repeats a frame.
    steps = [(b - a) % 10 for a, b in zip(numbers, numbers[1:], strict=False)]
    assert all(step >= 1 for step in steps), numbers
    assert any(b < a for a, b in zip(numbers, numbers[1:], strict=False)), f'no loop seen: {numbers}'
    stamps = [_stamp(m) for _, m in h.images]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_publishing_resumes_after_the_file_disappears_and_returns(harness, rig_file: Path, tmp_path: Path) -> None:
    path, away = tmp_path / 'clip.avi', tmp_path / 'elsewhere.avi'
    write_pattern_video(path, frames=5, fps=FPS)
    h = harness(rig=str(rig_file), camera='base', source=str(path), reconnect_initial_s=0.1, reconnect_max_s=0.4)
    assert h.spin(lambda: len(h.images) >= 3)
    os.rename(path, away)
    assert h.spin(lambda: any(d['state'] == 'reconnecting' for d in h.diags)), 'outage never reported'
    outage = next(d for d in h.diags if d['state'] == 'reconnecting')
    assert outage['_level'] == '2' and 'not found' in outage['last_error']
    assert 'reconnecting' in outage['_message']
    h.spin(lambda: False, timeout=0.3)  # let in-flight frames land
    count = len(h.images)
    h.spin(lambda: False, timeout=1.0)
    assert len(h.images) == count, 'published while the source was gone'
    last_stamp = _stamp(h.images[-1][1])
    os.rename(away, path)
    assert h.spin(lambda: len(h.images) >= count + 5), 'publishing did not resume'
    assert h.spin(lambda: h.diags[-1]['state'] == 'streaming' and int(h.diags[-1]['reconnects']) >= 1)
    resumed = [m for _, m in h.images[count:]]
    assert _stamp(resumed[0]) > last_stamp
    assert all(decode_frame_number(np.frombuffer(m.data, np.uint8).reshape(H, W, 3)) in range(5) for m in resumed)
    assert int(h.diags[-1]['failures']) >= 1


def test_a_frozen_camera_stops_publishing_reports_frozen_and_resumes_when_images_change(
    harness, rig_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / 'camera.avi'
    moving = write_pattern_video(path, frames=20)
    write_video(path, moving + [moving[-1]] * 60)  # 0.67 s of motion, then frame 19 for 2 s: stuck
    h = harness(
        rig=str(rig_file),
        camera='base',
        source=str(path),
        frozen_after_s=0.3,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.2,
    )
    # The driver has the file open; from now on every reopen finds a still video of frame 19, so the
    # camera stays frozen until the test gives it a changing one.
    write_video(tmp_path / 'still.avi', [moving[-1]] * 10)
    os.replace(tmp_path / 'still.avi', path)
    assert h.spin(lambda: any(d['state'] == 'frozen' for d in h.diags), timeout=30.0), h.diags
    frozen = next(d for d in h.diags if d['state'] == 'frozen')
    assert frozen['_level'] == '2' and frozen['frozen_events'] == '1', frozen
    assert frozen['_message'].startswith('frozen: the same image for'), frozen['_message']
    assert frozen['_message'].endswith('not publishing, reopening the source'), frozen['_message']
    # Reopened twice more and still frozen: one event, and not one repeated image published.
    assert h.spin(lambda: int(h.diags[-1]['reconnects']) >= 3 and h.diags[-1]['state'] == 'frozen'), h.diags[-1]
    assert h.diags[-1]['frozen_events'] == '1' and int(h.diags[-1]['repeated_frames']) >= 10
    numbers = [decode_frame_number(_pixels(m)) for _, m in h.images]
    assert numbers and numbers == sorted(set(numbers)) and numbers[-1] <= 19, numbers
    for (_, msg), number in zip(h.images, numbers, strict=True):
        np.testing.assert_array_equal(_pixels(msg), moving[number])
    count, last_stamp = len(h.images), _stamp(h.images[-1][1])

    changing = write_pattern_video(tmp_path / 'new.avi', frames=10, label='new')
    os.replace(tmp_path / 'new.avi', path)
    assert h.spin(lambda: len(h.images) >= count + 10), 'publishing did not resume'
    assert h.spin(lambda: h.diags[-1]['state'] == 'streaming'), h.diags[-1]
    assert h.diags[-1]['_level'] != '2' and h.diags[-1]['frozen_events'] == '1'
    resumed = [_pixels(m) for _, m in h.images[count:]]
    assert _stamp(h.images[count][1]) > last_stamp
    for image in resumed:
        np.testing.assert_array_equal(image, changing[decode_frame_number(image)])


def test_frozen_after_s_is_checked_at_start(ros_context, rig_file: Path) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.drivers.camera.node import CameraDriver

    for value, shown in ((-0.5, '-0.5'), (60.0, '60'), (float('nan'), 'nan')):
        params = {'rig': str(rig_file), 'camera': 'base', 'frozen_after_s': value}
        with pytest.raises(ConfigError) as info:
            CameraDriver(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        assert f'frozen_after_s: must be in [0, 10] s, got {shown}' in str(info.value)


def test_stamps_follow_sim_time(harness, rig_file: Path, ros_context) -> None:
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock

    clock_node = Node('fake_sim_clock', context=ros_context)
    clock_pub = clock_node.create_publisher(Clock, topics.CLOCK, topics.CLOCK_QOS)
    h = harness(rig=str(rig_file), camera='base', use_sim_time=True)
    h.executor.add_node(clock_node)
    sim_ns = 1_000 * 1_000_000_000

    def tick() -> bool:
        nonlocal sim_ns
        sim_ns += 10_000_000
        clock_pub.publish(Clock(clock=_time(sim_ns)))
        return len(h.images) >= 5

    assert h.spin(tick, timeout=30.0)
    stamps = [_stamp(m) for _, m in h.images]
    assert all(1_000e9 <= s <= sim_ns for s in stamps), stamps
    h.executor.remove_node(clock_node)
    clock_node.destroy_node()


def _time(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@pytest.mark.parametrize(
    ('params', 'error', 'message'),
    [
        ({'camera': 'base', 'source': '{tmp}/nope.mp4'}, CaptureError, 'nope.mp4 not found'),
        ({'camera': 'big', 'source': '{tmp}/clip.avi'}, CaptureError, 'is 160x120 but the camera is configured'),
        ({'camera': 'base', 'source': 'usb cam'}, CaptureError, "'usb cam' is not a V4L2 device"),
        ({'camera': 'top'}, ConfigError, "has no camera 'top'"),
        ({}, ConfigError, 'parameter "camera" is required'),
        ({'camera': 'base', 'camera_info_file': '{tmp}/calib.yaml'}, ConfigError, 'calib.yaml: camera_info_file not'),
    ],
)
def test_bad_parameters_fail_at_start_with_a_clear_error(
    ros_context, rig_file: Path, tmp_path: Path, params: dict[str, str], error: type, message: str
) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.drivers.camera.node import CameraDriver

    write_pattern_video(tmp_path / 'clip.avi', frames=2)
    values = {'rig': str(rig_file), **{k: v.replace('{tmp}', str(tmp_path)) for k, v in params.items()}}
    with pytest.raises(error) as info:
        CameraDriver(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    assert message in str(info.value)


def test_calibration_file_fills_camera_info(harness, rig_file: Path, tmp_path: Path) -> None:
    calib = tmp_path / 'base.yaml'
    k = [100.0, 0.0, 80.0, 0.0, 101.0, 60.0, 0.0, 0.0, 1.0]
    p = [100.0, 0.0, 80.0, 0.0, 0.0, 101.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    calib.write_text(
        yaml.safe_dump(
            {
                'image_width': W,
                'image_height': H,
                'camera_name': 'base',
                'camera_matrix': {'rows': 3, 'cols': 3, 'data': k},
                'distortion_model': 'plumb_bob',
                'distortion_coefficients': {'rows': 1, 'cols': 5, 'data': [0.1, -0.2, 0.0, 0.0, 0.05]},
                'projection_matrix': {'rows': 3, 'cols': 4, 'data': p},
            }
        )
    )
    h = harness(rig=str(rig_file), camera='base', camera_info_file=str(calib))
    assert h.spin(lambda: len(h.infos) >= 1)
    info = h.infos[-1]
    assert list(info.k) == k and list(info.p) == p and list(info.d) == [0.1, -0.2, 0.0, 0.0, 0.05]
    assert info.distortion_model == 'plumb_bob'


def test_executable_reports_a_bad_source_in_one_line_and_exits_2(rig_file: Path) -> None:
    cmd = [sys.executable, '-m', 'bimanual_vla.drivers.camera.node', '--ros-args', '-p', f'rig:={rig_file}']
    cmd += ['-p', 'camera:=base']
    cmd += ['-p', 'source:=usb cam']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "camera_driver: error: camera source 'usb cam' is not a V4L2 device (/dev/videoN or an index), "
        "a video file (.mp4, .avi, .mkv, .mov, ...) or 'test_pattern'"
    ]


@pytest.mark.parametrize('params', [{'camera': 'left_wrist'}, {'camera': 'base', 'source': '/dev/video99'}])
def test_a_missing_device_is_reported_once_and_in_diagnostics_and_the_node_keeps_trying(
    harness, params: dict[str, str], rig_file: Path
) -> None:
    h = harness(rig=str(rig_file), reconnect_initial_s=0.05, reconnect_max_s=0.1, **params)
    device = params.get('source', '/dev/video98')
    assert h.spin(lambda: len(h.diags) >= 2)
    diag = h.diags[-1]
    assert diag['_level'] == '2'  # ERROR
    assert diag['_message'].startswith(f'no camera: camera device {device} does not exist'), diag['_message']
    assert diag['state'] == 'waiting' and diag['frames_published'] == '0'
    failures = int(diag['failures'])
    assert h.spin(lambda: int(h.diags[-1]['failures']) >= failures + 3)  # still retrying
    assert h.images == []


def test_executable_with_a_missing_device_keeps_running_and_says_so_in_one_line(rig_file: Path) -> None:
    cmd = [sys.executable, '-m', 'bimanual_vla.drivers.camera.node', '--ros-args', '-p', f'rig:={rig_file}']
    cmd += ['-p', 'camera:=left_wrist', '-p', 'reconnect_initial_s:=0.1', '-p', 'reconnect_max_s:=0.2']
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3]
    )
    try:
        time.sleep(6.0)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    errors = [line for line in (out + err).splitlines() if 'ERROR' in line or 'rror' in line]
    assert len(errors) == 1, out + err
    assert 'camera left_wrist: camera device /dev/video98 does not exist' in errors[0]
    assert 'retrying until it appears' in errors[0]
    assert 'Traceback' not in err
