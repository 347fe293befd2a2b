"""Camera images to model pixels with OpenCV/numpy (PI0ImageProcessor needs torchvision).

An optional crop box per camera (x, y, width, height in the camera's pixels) is cut out first:
a region of interest, e.g. the part of a fixed top camera's view where objects can be, reaches
the model at a higher resolution than the whole frame would (the box is saved with the
checkpoint, so training and the policy node cut the same region).

The geometry follows pi0's ``resize_with_pad``: keep the aspect ratio, scale the
longer side to fit, centre the image and fill the borders with black, so a
640x480 camera and a square camera both reach the model undistorted. Values go
from uint8 [0, 255] to float32 [-1, 1] (SigLIP's 0.5 mean / 0.5 std), channels
first, RGB.
"""

from __future__ import annotations

import cv2
import numpy as np


class ObservationError(ValueError):
    """An observation the model cannot use: wrong image shape/dtype, missing camera, bad state."""


def check_image(name: str, image: object) -> np.ndarray:
    """Return `image` if it is an HxWx3 uint8 array, else raise ObservationError naming the camera."""
    if not isinstance(image, np.ndarray):
        raise ObservationError(f'camera {name!r}: expected a numpy array, got {type(image).__name__}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ObservationError(f'camera {name!r}: expected an HxWx3 RGB image, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ObservationError(f'camera {name!r}: empty image (shape {image.shape})')
    if image.dtype != np.uint8:
        raise ObservationError(f'camera {name!r}: expected dtype uint8, got {image.dtype}')
    return image


CropBox = tuple[int, int, int, int]
"""(x, y, width, height) in source pixels."""


def crop_box_problem(box: CropBox) -> str | None:
    """What is wrong with `box` whatever the image (None if nothing): the one rule the CLI, the
    checkpoint metadata and `crop_image` all apply."""
    x, y, w, h = box
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        return f'expected x, y >= 0 and width, height > 0, got {list(box)}'
    return None


def crop_image(name: str, image: np.ndarray, box: CropBox | None) -> np.ndarray:
    """The `box` region of `image` (a view, no copy); the whole image if `box` is None."""
    if box is None:
        return image
    x, y, w, h = box
    height, width = image.shape[:2]
    if crop_box_problem(box) or x + w > width or y + h > height:
        raise ObservationError(
            f'camera {name!r}: crop box x={x} y={y} w={w} h={h} does not fit in its {width}x{height} image'
        )
    return image[y : y + h, x : x + w]


def resize_with_pad_geometry(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the resized size and where it sits, centred, in the target."""
    scale = min(target_h / height, target_w / width)
    new_h = min(target_h, max(1, round(height * scale)))
    new_w = min(target_w, max(1, round(width * scale)))
    return new_h, new_w, (target_h - new_h) // 2, (target_w - new_w) // 2


def resize_with_pad(image: np.ndarray, target_h: int, target_w: int) -> np.ndarray:
    """Aspect-preserving resize into a black (0) uint8 canvas of target_h x target_w."""
    h, w = image.shape[:2]
    new_h, new_w, top, left = resize_with_pad_geometry(h, w, target_h, target_w)
    if (new_h, new_w) != (h, w):
        shrinking = new_h < h or new_w < w
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    canvas = np.zeros((target_h, target_w, 3), dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = image
    return canvas


def model_rgb(name: str, image: object, size: tuple[int, int], crop: CropBox | None = None) -> np.ndarray:
    """One camera frame -> the uint8 (H, W, 3) the model sees: checked, cropped, resized with padding."""
    return resize_with_pad(crop_image(name, check_image(name, image), crop), size[0], size[1])


def image_to_model(name: str, image: object, size: tuple[int, int], crop: CropBox | None = None) -> np.ndarray:
    """One camera frame -> float32 (3, H, W) in [-1, 1], ready for SigLIP."""
    rgb = model_rgb(name, image, size, crop)
    return (rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def images_to_model(
    images: dict[str, np.ndarray],
    camera_names: list[str],
    size: tuple[int, int],
    crops: dict[str, CropBox] | None = None,
) -> np.ndarray:
    """All cameras in the checkpoint's order -> float32 (n_cameras, 3, H, W)."""
    missing = [c for c in camera_names if c not in images]
    if missing:
        raise ObservationError(f'missing camera image(s) {missing}; the checkpoint expects {camera_names}')
    crops = crops or {}
    return np.stack([image_to_model(c, images[c], size, crops.get(c)) for c in camera_names])
