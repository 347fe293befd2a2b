"""camera_driver's image_raw/compressed over Fast DDS: the JPEG is the raw frame within JPEG error, it is
encoded only while someone subscribes, and a bad jpeg_quality stops the node at start."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, resolve_rig_path
from bimanual_vla.image_msgs import compressed_to_rgb, image_to_rgb

pytestmark = pytest.mark.ros

W, H = 160, 120


@pytest.fixture
def rig_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    data['cameras'] = [{'name': 'base', 'source': 'test_pattern', 'width': W, 'height': H, 'fps': 30.0}]
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_compressed_frames_are_the_raw_frames_within_jpeg_error_and_only_while_subscribed(
    ros_context, spin, rig_file: Path
) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CompressedImage, Image

    from bimanual_vla.drivers.camera.node import CameraDriver

    params = [
        Parameter('rig', value=str(rig_file)),
        Parameter('camera', value='base'),
        Parameter('jpeg_quality', value=90),
    ]
    driver = CameraDriver(context=ros_context, parameter_overrides=params)
    listener = Node('compressed_listener', context=ros_context)
    raw: dict[int, Image] = {}
    jpeg: list[CompressedImage] = []
    listener.create_subscription(
        Image, topics.camera_image('base'), lambda m: raw.__setitem__(_stamp(m), m), topics.SENSOR_QOS
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(driver)
    executor.add_node(listener)
    try:
        assert spin(executor, lambda: len(raw) >= 10, 20)
        assert driver._compressed.published == 0  # nobody asked for JPEG: nothing encoded
        listener.create_subscription(
            CompressedImage, topics.camera_image_compressed('base'), jpeg.append, topics.SENSOR_QOS
        )
        assert spin(executor, lambda: sum(_stamp(m) in raw for m in jpeg) >= 5, 20), f'{len(jpeg)} JPEG frames'
        time.sleep(0.1)
        pairs = [(raw[_stamp(m)], m) for m in jpeg if _stamp(m) in raw]
        for r, c in pairs:
            assert c.format == 'rgb8; jpeg compressed bgr8' and c.header.frame_id == 'base_optical_frame'
            assert len(c.data) < W * H * 3 / 4
            err = np.abs(compressed_to_rgb(c).astype(int) - image_to_rgb(r).astype(int))
            assert err.mean() < 4.0, err.mean()  # the test pattern's sharp code strip is JPEG's worst case
    finally:
        executor.shutdown()
        driver.destroy_node()
        listener.destroy_node()


def test_bad_jpeg_quality_fails_at_start(ros_context, rig_file: Path) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.drivers.camera.node import CameraDriver

    params = [
        Parameter('rig', value=str(rig_file)),
        Parameter('camera', value='base'),
        Parameter('jpeg_quality', value=0),
    ]
    with pytest.raises(ConfigError, match=r'jpeg_quality must be an integer in \[1, 100\], got 0'):
        CameraDriver(context=ros_context, parameter_overrides=params)
