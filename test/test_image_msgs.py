"""Camera messages: JPEG (image_transport's compressed form) round trips, decode_image, CompressedPublisher."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from bimanual_vla.config import ConfigError
from bimanual_vla.image_msgs import (
    JPEG_FORMAT,
    CompressedPublisher,
    ImageError,
    check_jpeg_quality,
    compressed_from_rgb,
    compressed_to_rgb,
    decode_image,
    encode_jpeg,
)


def scene(h: int = 240, w: int = 320) -> np.ndarray:
    """A smooth colour image with a few edges, like a camera frame (JPEG's error depends on content)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)
    img[60:120, 80:200] = (200, 30, 30)  # a red block: checks the channel order
    return img


def test_jpeg_round_trip_is_the_image_within_jpeg_error_and_keeps_rgb_order() -> None:
    rgb = scene()
    header = Header(frame_id='base_optical_frame')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = compressed_from_rgb(rgb, header, quality=90)
    assert msg.format == JPEG_FORMAT
    assert msg.header.frame_id == 'base_optical_frame' and msg.header.stamp.nanosec == 345
    assert len(msg.data) < rgb.nbytes / 10  # compressed, not stored
    back = compressed_to_rgb(msg)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    err = np.abs(back.astype(int) - rgb.astype(int))
    assert err.mean() < 2.0 and np.percentile(err, 99) < 12
    assert tuple(back[90, 140]) == pytest.approx((200, 30, 30), abs=6)  # red stays red (not BGR)


def test_lower_quality_gives_fewer_bytes_and_more_error() -> None:
    rgb = scene()
    hi, lo = encode_jpeg(rgb, 95), encode_jpeg(rgb, 30)
    assert len(lo) < len(hi)
    err = [np.abs(compressed_to_rgb(CompressedImage(data=d)).astype(int) - rgb).mean() for d in (hi, lo)]
    assert err[0] < err[1]


def test_decode_image_takes_raw_and_compressed() -> None:
    rgb = scene(8, 16)
    raw = Image(height=8, width=16, encoding='rgb8', step=48, data=rgb.tobytes())
    assert np.array_equal(decode_image(raw), rgb)
    png = CompressedImage(format='png', data=cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes())
    assert np.array_equal(decode_image(png), rgb)  # lossless: exactly the image


def test_garbage_is_an_image_error() -> None:
    with pytest.raises(ImageError, match='cannot decode 4 bytes'):
        compressed_to_rgb(CompressedImage(format='jpeg', data=b'\x00\x01\x02\x03'))
    with pytest.raises(ImageError, match='empty'):
        compressed_to_rgb(CompressedImage(format='jpeg'))


@pytest.mark.parametrize('value', [0, 101, 80.0, True, '80'])
def test_jpeg_quality_is_checked(value: object) -> None:
    with pytest.raises(ConfigError, match='jpeg_quality must be an integer in \\[1, 100\\]'):
        check_jpeg_quality('node cam', value)


class FakePublisher:
    """Stands in for an rclpy Publisher: the subscriber count and what was published."""

    def __init__(self) -> None:
        self.subscribers = 0
        self.sent: list[CompressedImage] = []

    def get_subscription_count(self) -> int:
        return self.subscribers

    def publish(self, msg: CompressedImage) -> None:
        self.sent.append(msg)


def test_compressed_publisher_encodes_only_while_subscribed() -> None:
    pub = FakePublisher()
    out = CompressedPublisher(pub, quality=70)
    assert not out.publish(scene(), Header()) and pub.sent == []
    pub.subscribers = 1
    assert out.publish(scene(), Header())
    assert len(pub.sent) == 1 and out.published == 1 and out.bytes == len(pub.sent[0].data)
