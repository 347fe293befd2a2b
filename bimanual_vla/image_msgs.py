"""sensor_msgs/Image -> numpy RGB, shared by every consumer of camera topics (policy, dataset, demo).

Honours the message's ``step`` (row padding) and converts the common 8-bit encodings, so a
camera publishing bgr8 or padded rows is read correctly; anything else is an ImageError naming
the problem rather than a garbled array.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

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
