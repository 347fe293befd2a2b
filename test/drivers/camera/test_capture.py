"""The camera capture layer without ROS: frame-number code, sources, ordering, drop accounting, recovery,
bad parameters."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bimanual_vla.drivers.camera.capture import (
    Capture,
    CaptureError,
    DeviceMissing,
    Frame,
    FreezeDetector,
    LatestFrame,
    SourceConfigError,
    TestPatternRenderer,
    TestPatternSource,
    V4L2Source,
    VideoFileSource,
    decode_frame_number,
    encode_frame_number,
    make_source,
    new_rgb_buffer,
)

W, H = 160, 120


def write_video(path: Path, images: list[np.ndarray], fps: float = 30.0) -> list[np.ndarray]:
    """A lossless (FFV1) video of RGB ``images``, so decoding gives them back byte for byte."""
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'FFV1'), fps, (width, height))
    assert writer.isOpened(), 'OpenCV cannot write FFV1'
    for rgb in images:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return images


def write_pattern_video(
    path: Path, frames: int, fps: float = 30.0, width: int = W, height: int = H
) -> list[np.ndarray]:
    """A lossless (FFV1) video of test-pattern frames 0..frames-1; returns the RGB frames written."""
    renderer = TestPatternRenderer(width, height, 'file')
    return write_video(path, [renderer.render(n) for n in range(frames)], fps)


def write_freezing_video(path: Path, moving: int, frozen: int, fps: float = 30.0) -> list[np.ndarray]:
    """Test-pattern frames 0..moving-1, then ``frozen`` copies of the last one: a camera that got stuck."""
    images = write_pattern_video(path, moving, fps)
    return write_video(path, images + [images[-1]] * frozen, fps)


def take_frames(capture: Capture, count: int, timeout: float = 20.0, pause_s: float = 0.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = capture.frames.take(timeout=0.5)
        if frame is not None:
            frames.append(frame)
            if pause_s:
                time.sleep(pause_s)
    assert len(frames) == count, f'got {len(frames)} of {count} frames; stats {capture.stats()}'
    return frames


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ------------------------------------------------------------------ frame number code


@pytest.mark.parametrize(('width', 'height'), [(640, 480), (W, H), (128, 64), (1280, 720)])
def test_frame_number_code_round_trips(width: int, height: int) -> None:
    renderer = TestPatternRenderer(width, height, 'cam')
    for number in (0, 1, 2, 255, 256, 123_456_789, 2**32 - 1):
        assert decode_frame_number(renderer.render(number)) == number


def test_frame_number_code_rejects_images_without_a_code() -> None:
    rng = np.random.default_rng(0)
    assert decode_frame_number(np.zeros((H, W, 3), np.uint8)) is None
    assert decode_frame_number(np.full((H, W, 3), 255, np.uint8)) is None
    assert decode_frame_number(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) is None
    image = np.zeros((H, W, 3), np.uint8)
    encode_frame_number(image, 0xA5A5A5A5)
    image[: H // 60 + 4, :5] = 255 - image[: H // 60 + 4, :5]  # corrupt one bit in the first row only
    assert decode_frame_number(image) is None


def test_frame_number_code_survives_jpeg() -> None:
    image = TestPatternRenderer(640, 480).render(987_654)
    ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    assert decode_frame_number(cv2.imdecode(encoded, cv2.IMREAD_COLOR)) == 987_654


def test_rgb_buffer_is_an_array_the_image_message_can_take_without_copy() -> None:
    data, view = new_rgb_buffer(W, H)
    assert data.typecode == 'B' and len(data) == W * H * 3
    view[0, 0] = (1, 2, 3)
    assert list(data[:3]) == [1, 2, 3]


# ------------------------------------------------------------------------ mailbox


def _frame(seq: int, ns: int) -> Frame:
    return Frame(new_rgb_buffer(128, 64)[0], 128, 64, seq, ns)


def test_latest_frame_hands_each_frame_out_once_and_counts_superseded() -> None:
    box = LatestFrame()
    assert box.take(timeout=0) is None
    assert box.put(_frame(0, 10))
    assert box.put(_frame(1, 20))  # replaces frame 0 before anyone took it
    got = box.take(timeout=0)
    assert got is not None and got.sequence == 1
    assert box.take(timeout=0) is None  # never the same frame twice
    assert box.superseded == 1
    assert not box.put(_frame(1, 30))  # repeated sequence number
    assert not box.put(_frame(2, 20))  # timestamp not increasing
    assert box.rejected == 2 and box.take(timeout=0) is None


# ------------------------------------------------------------------- test pattern


def test_test_pattern_frames_are_exact_ordered_and_every_number_is_accounted_for() -> None:
    source = TestPatternSource(W, H, 100.0, label='cam')
    capture = Capture(source)
    capture.start()
    try:
        # A consumer slower than the source: some frames must be superseded.
        frames = take_frames(capture, 12, pause_s=0.03)
    finally:
        capture.stop()
    leftover = capture.frames.take(timeout=0)
    delivered = len(frames) + (leftover is not None)
    renderer = TestPatternRenderer(W, H, 'cam')
    sequences = [f.sequence for f in frames]
    assert sequences == sorted(set(sequences)), sequences
    assert all(b.capture_ns > a.capture_ns for a, b in zip(frames, frames[1:], strict=False))
    for frame in frames:
        assert frame.image.shape == (H, W, 3)
        assert decode_frame_number(frame.image) == frame.sequence
        np.testing.assert_array_equal(frame.image, renderer.render(frame.sequence))
    stats = capture.stats()
    assert stats.superseded > 0
    assert stats.state == 'stopped' and stats.reconnects == 0 and stats.failures == 0
    # Every frame number the source used was delivered, superseded, or skipped by the source.
    generated = source._next_sequence
    assert generated == delivered + stats.superseded + stats.source_gaps + stats.rejected
    assert stats.rejected == 0


# --------------------------------------------------------------------- video file


def test_file_source_plays_exact_frames_in_order_in_real_time_and_loops(tmp_path: Path) -> None:
    path = tmp_path / 'clip.avi'
    written = write_pattern_video(path, frames=8, fps=30.0)
    source = make_source(str(path), W, H, 30.0)
    assert isinstance(source, VideoFileSource)
    capture = Capture(source)
    capture.start()
    try:
        frames = take_frames(capture, 14)
    finally:
        capture.stop()
    sequences = [f.sequence for f in frames]
    assert sequences == sorted(set(sequences))
    for frame in frames:
        number = decode_frame_number(frame.image)
        assert number == frame.sequence % 8, (number, frame.sequence)
        np.testing.assert_array_equal(frame.image, written[number])  # lossless codec: byte-exact RGB
    assert source.loops >= 1
    span_s = (frames[-1].capture_ns - frames[0].capture_ns) / 1e9
    assert span_s >= 0.5 * (sequences[-1] - sequences[0]) / 30.0, 'played faster than the file frame rate'


def test_file_source_uses_the_file_frame_rate_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / 'slow.avi'
    write_pattern_video(path, frames=3, fps=20.0)
    source = make_source(path.as_posix(), W, H, 30.0)
    source.open()
    source.close()
    assert source.fps == pytest.approx(20.0)
    assert any('20 fps' in note for note in source.notes)


def test_file_renamed_away_is_retried_with_backoff_and_playback_resumes(tmp_path: Path) -> None:
    path = tmp_path / 'clip.avi'
    away = tmp_path / 'moved.avi'
    write_pattern_video(path, frames=4, fps=30.0)
    capture = Capture(make_source(str(path), W, H, 30.0), backoff_initial_s=0.05, backoff_max_s=0.2)
    capture.start()
    try:
        before = take_frames(capture, 3)
        os.rename(path, away)
        assert wait_for(lambda: capture.stats().state == 'reconnecting'), capture.stats()
        stats = capture.stats()
        assert 'not found' in stats.last_error and str(path) in stats.last_error
        capture.frames.take(timeout=0)  # a frame captured just before the outage
        assert capture.frames.take(timeout=0.4) is None, 'published while the file was gone'
        failures = capture.stats().failures
        assert wait_for(lambda: capture.stats().failures > failures + 1), 'no retries while the file was gone'
        os.rename(away, path)
        after = take_frames(capture, 3)
        stats = capture.stats()
    finally:
        capture.stop()
    assert stats.state == 'streaming' and stats.reconnects >= 1
    assert after[0].sequence > before[-1].sequence
    assert all(decode_frame_number(f.image) in range(4) for f in after)  # real file content again


# ------------------------------------------------------------------ bad parameters


@pytest.mark.parametrize(
    ('source', 'size', 'message'),
    [
        ('/dev/video99', (W, H), '/dev/video99 does not exist'),
        (99, (W, H), '/dev/video99 does not exist'),
        ('97', (W, H), '/dev/video97 does not exist'),
        ('/dev/null', (W, H), 'could not open /dev/null'),
        ('{tmp}/missing.mp4', (W, H), 'missing.mp4 not found'),
        ('{tmp}/garbage.avi', (W, H), 'cannot be decoded'),
        ('{tmp}', (W, H), 'is not a regular file'),
        ('{tmp}/clip.avi', (320, 240), 'is 160x120 but the camera is configured for 320x240'),
        ('banana', (W, H), "'banana' is not a V4L2 device"),
        ('', (W, H), 'source is empty'),
        ('test_pattern', (64, 32), 'test_pattern needs at least'),
    ],
)
def test_bad_sources_fail_at_start_with_a_clear_message(
    tmp_path: Path, source: str | int, size: tuple[int, int], message: str
) -> None:
    (tmp_path / 'garbage.avi').write_bytes(b'not a video at all' * 64)
    write_pattern_video(tmp_path / 'clip.avi', frames=2)
    if isinstance(source, str):
        source = source.replace('{tmp}', str(tmp_path))
    with pytest.raises(CaptureError) as info:
        Capture(make_source(source, size[0], size[1], 30.0)).start()
    assert message in str(info.value)
    if 'does not exist' in message or 'not found' in message or 'not a V4L2' in message:
        assert isinstance(info.value, SourceConfigError)


def test_a_missing_camera_device_is_waited_for_and_opened_once_it_appears(tmp_path: Path) -> None:
    # A rig's first start with a camera unplugged: the capture reports the missing device and keeps
    # trying to open it, and picks up the device node once it appears (here a link to /dev/null,
    # which OpenCV then cannot open: the next, different error proves the new node was tried).
    device = tmp_path / 'video0'
    with pytest.raises(DeviceMissing, match=f'camera device {device} does not exist'):
        Capture(V4L2Source(str(device), W, H, 30.0)).start()  # by default, still an error at start
    capture = Capture(V4L2Source(str(device), W, H, 30.0), backoff_initial_s=0.02, backoff_max_s=0.05)
    capture.start(wait_for_device=True)
    try:
        assert capture.running
        first = capture.stats()
        assert first.state == 'waiting'
        assert first.last_error.startswith(f'DeviceMissing: camera device {device} does not exist'), first.last_error
        deadline = time.monotonic() + 10
        while capture.stats().failures < first.failures + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert capture.stats().failures >= first.failures + 3  # retried, not given up
        assert capture.stats().state == 'waiting'
        device.symlink_to('/dev/null')
        while 'could not open' not in capture.stats().last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 'OpenCV could not open' in capture.stats().last_error, capture.stats().last_error
    finally:
        capture.stop()
    assert capture.stats().state == 'stopped'


# -------------------------------------------------------------------- frozen source


def test_freeze_detector_times_a_run_of_identical_frames_from_when_the_image_was_first_seen() -> None:
    renderer = TestPatternRenderer(W, H)
    frames = [_pattern_frame(renderer, n) for n in (0, 1, 1, 1, 2)]
    detector = FreezeDetector(frozen_after_s=0.5)
    s = 1_000_000_000
    assert [detector.check(f, t * s // 10) for t, f in enumerate(frames[:4])] == [False, False, True, True]
    assert detector.run == 2
    assert detector.unchanged_s(4 * s // 10) == pytest.approx(0.3)  # image 1 was first seen at 0.1 s
    assert not detector.expired(5 * s // 10) and detector.expired(6 * s // 10)
    detector.restart_timer(6 * s // 10)  # reopened: a new period, the same run
    assert not detector.expired(10 * s // 10) and detector.check(frames[3], 10 * s // 10)
    assert detector.run == 3 and detector.unchanged_s(10 * s // 10) == pytest.approx(0.9)
    assert detector.expired(11 * s // 10)
    assert not detector.check(frames[4], 12 * s // 10)  # the image changed: the run is over
    assert detector.run == 0 and detector.unchanged_s(100 * s) == 0 and not detector.expired(100 * s)
    off = FreezeDetector(frozen_after_s=0.0)
    assert not off.enabled and not any(off.check(f, i) for i, f in enumerate(frames))
    for bad in (-0.1, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='frozen_after_s'):
            FreezeDetector(bad)


def _pattern_frame(renderer: TestPatternRenderer, number: int) -> Frame:
    data, view = new_rgb_buffer(renderer.width, renderer.height)
    renderer.render_into(view, number)
    return Frame(data, renderer.width, renderer.height, number, number + 1)


def test_a_frozen_source_is_withheld_reported_reopened_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / 'stuck.avi'
    written = write_freezing_video(path, moving=20, frozen=90)  # 0.67 s of motion, then 3 s of frame 19
    frozen_after_s = 0.4
    capture = Capture(
        make_source(str(path), W, H, 30.0), backoff_initial_s=0.05, backoff_max_s=0.2, frozen_after_s=frozen_after_s
    )
    capture.start()
    frames: list[Frame] = []
    snapshots = []  # stats right after each frame was taken
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not (len(frames) > 25 and snapshots[-1].frozen_events >= 1):
            frame = capture.frames.take(timeout=0.5)
            if frame is not None:
                frames.append(frame)
                snapshots.append(capture.stats())
    finally:
        capture.stop()
    stats = capture.stats()
    numbers = [decode_frame_number(f.image) for f in frames]
    assert stats.frozen_events >= 1, (numbers, stats)
    for a, b in zip(frames, frames[1:], strict=False):  # never the same image twice in a row
        assert not np.array_equal(a.image, b.image), (decode_frame_number(a.image), numbers)
    for frame, number in zip(frames, numbers, strict=True):
        np.testing.assert_array_equal(frame.image, written[number])
    # The frozen tail was withheld: after frame 19 the next frame delivered is the file from its start
    # again (reopened), at least frozen_after_s later.
    restarts = [i for i in range(1, len(numbers)) if numbers[i] < numbers[i - 1]]
    assert restarts, numbers
    for i in restarts:
        assert numbers[i] < 19
        assert frames[i].capture_ns - frames[i - 1].capture_ns >= frozen_after_s * 1e9
    assert stats.repeated_frames >= 1 and stats.reconnects >= 1
    assert stats.last_error.startswith('frozen: the same image for'), stats.last_error
    assert any(s.state == 'streaming' and s.frozen_events >= 1 for s in snapshots[restarts[0] :])
    assert stats.dropped == stats.superseded + stats.source_gaps  # withheld repeats are not drops


@pytest.mark.parametrize('kind', ['test_pattern', 'file'])
def test_changing_sources_never_trip_the_frozen_check(tmp_path: Path, kind: str) -> None:
    if kind == 'file':
        write_pattern_video(tmp_path / 'clip.avi', frames=6)  # loops several times below
        source = make_source(str(tmp_path / 'clip.avi'), W, H, 30.0)
    else:
        source = make_source(kind, W, H, 30.0)
    capture = Capture(source, frozen_after_s=0.05)  # two frame periods: any repeat run would trip it
    capture.start()
    try:
        take_frames(capture, 25)
        stats = capture.stats()
    finally:
        capture.stop()
    assert (stats.state, stats.frozen_events, stats.repeated_frames, stats.reconnects) == ('streaming', 0, 0, 0)
    assert stats.frozen_after_s == 0.05


def test_a_still_video_stays_frozen_across_reopens_unless_the_check_is_off(tmp_path: Path) -> None:
    path = tmp_path / 'still.avi'
    still = TestPatternRenderer(W, H, 'still').render(7)
    write_video(path, [still] * 10)
    capture = Capture(make_source(str(path), W, H, 30.0), backoff_initial_s=0.05, backoff_max_s=0.1, frozen_after_s=0.2)
    capture.start()
    try:
        first = take_frames(capture, 1)[0]
        assert wait_for(lambda: capture.stats().reconnects >= 3), capture.stats()
        stats = capture.stats()
        assert capture.frames.take(timeout=0) is None, 'a repeated image was delivered'
    finally:
        capture.stop()
    np.testing.assert_array_equal(first.image, still)
    assert stats.state == 'frozen' and stats.frozen_events == 1  # one event, however many reopens
    assert stats.repeated_frames >= 10 and stats.frames_captured == 1

    capture = Capture(make_source(str(path), W, H, 30.0), frozen_after_s=0)
    capture.start()
    try:
        frames = take_frames(capture, 12)  # more than the file holds: it loops
        stats = capture.stats()
    finally:
        capture.stop()
    assert all(np.array_equal(f.image, still) for f in frames)
    assert (stats.frozen_events, stats.repeated_frames, stats.frozen_after_s) == (0, 0, 0)
