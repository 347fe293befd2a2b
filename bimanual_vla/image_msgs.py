"""Camera messages <-> numpy RGB, shared by every producer and consumer of camera topics.

``image_to_rgb`` reads sensor_msgs/Image: it honours the message's ``step`` (row padding) and
converts the common 8-bit encodings, so a camera publishing bgr8 or padded rows is read correctly;
anything else is an ImageError naming the problem rather than a garbled array.

``compressed_from_rgb`` / ``compressed_to_rgb`` are the JPEG form image_transport's ``compressed``
plugin uses (``<image topic>/compressed``, sensor_msgs/CompressedImage, ``format`` "rgb8; jpeg
compressed bgr8"): about 20-40x fewer bytes than rgb8, for a policy on another computer
(docs/remote_policy.md). ``CompressedPublisher`` encodes only while someone subscribes, so a camera
nobody reads compressed costs no CPU. ``decode_image`` takes either message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from bimanual_vla.config import ConfigError

_ENCODINGS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}


class ImageError(ValueError):
    """An image message that cannot be turned into an RGB array."""


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8/bgr8/rgba8/bgra8/mono8) -> HxWx3 uint8 RGB, honouring ``step`` padding."""
    channels = _ENCODINGS.get(msg.encoding)
    if channels is None:
        raise ImageError(f'unsupported encoding {msg.encoding!r} (use one of {", ".join(_ENCODINGS)})')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * channels:
        raise ImageError(f'bad geometry {w}x{h}, step {step} for {msg.encoding}')
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != h * step:
        raise ImageError(f'{data.size} bytes for {h} rows of {step} bytes')
    img = data.reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if msg.encoding == 'mono8':
        return np.repeat(img, 3, axis=2)
    if msg.encoding.startswith('bgr'):
        return np.ascontiguousarray(img[:, :, 2::-1])
    return np.ascontiguousarray(img[:, :, :3])


JPEG_QUALITY = 80
"""Default JPEG quality (OpenCV's scale, 0-100): what image_transport's compressed plugin defaults to."""
JPEG_FORMAT = 'rgb8; jpeg compressed bgr8'
"""``format`` as image_transport's compressed plugin writes it for an rgb8 source."""


def check_jpeg_quality(where: str, value: object) -> int:
    """A ``jpeg_quality`` parameter's value, or ConfigError naming ``where`` (one line at start)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ConfigError(f'{where}: parameter jpeg_quality must be an integer in [1, 100], got {value!r}')
    return value


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """HxWx3 uint8 RGB -> JPEG bytes (OpenCV, which stores BGR: the channels are swapped first)."""
    import cv2  # here, not at the top: the contract layer stays importable without OpenCV

    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError(f'JPEG encoding failed for an image of shape {rgb.shape}')
    return buf.tobytes()


def compressed_from_rgb(rgb: np.ndarray, header: Any, quality: int = JPEG_QUALITY) -> CompressedImage:
    """A CompressedImage of ``rgb`` carrying ``header`` (the raw image's stamp and frame)."""
    msg = CompressedImage(format=JPEG_FORMAT)
    msg.header = header
    msg.data = encode_jpeg(rgb, quality)
    return msg


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG, any format string) -> HxWx3 uint8 RGB."""
    import cv2

    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise ImageError('empty compressed image')
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # always 3-channel BGR, whatever was encoded
    if img is None:
        raise ImageError(f'cannot decode {data.size} bytes of format {msg.format!r}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_image(msg: Image | CompressedImage) -> np.ndarray:
    """Either camera message -> HxWx3 uint8 RGB (the policy node's inference thread calls it)."""
    return compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)


class CompressedPublisher:
    """Publishes a camera's JPEG form on an existing publisher, only while it has subscribers.

    ``publisher`` is an rclpy Publisher of CompressedImage (anything with ``publish`` and
    ``get_subscription_count``). Encoding a 640x480 frame costs a few milliseconds of CPU
    (bench/camera_bench.py), too much to spend on a topic nobody reads.
    """

    def __init__(self, publisher: Any, quality: int = JPEG_QUALITY) -> None:
        self.publisher, self.quality = publisher, int(quality)
        self.published = 0
        self.bytes = 0

    def wanted(self) -> bool:
        """Does anyone subscribe (so a caller can skip preparing the pixels)?"""
        return self.publisher.get_subscription_count() > 0

    def publish(self, rgb: np.ndarray | None, header: Any) -> bool:
        """Encode and publish ``rgb`` with ``header`` if anyone listens; True if it did."""
        if rgb is None or not self.wanted():
            return False
        msg = compressed_from_rgb(rgb, header, self.quality)
        self.publisher.publish(msg)
        self.published += 1
        self.bytes += len(msg.data)
        return True
