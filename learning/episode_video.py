"""What a person wants to see of an episode: cameras side by side with text drawn on.

:class:`EpisodeRecorder` collects frames (one RGB image per camera plus a few lines of
text, e.g. the subtask the policy wrote and the reward stage) and writes them as a short
MP4 (OpenCV's ``mp4v`` codec, no ffmpeg needed) and/or one PNG contact sheet: a grid of
evenly spaced frames, the quickest way to judge an episode in a CI log or a PR.
Frames are RGB uint8 numpy arrays, as the sim renderer and ``sensor_msgs/Image`` (rgb8)
give them; cameras of different sizes are scaled to a common height.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def compose_frame(images: Mapping[str, np.ndarray], lines: Sequence[str] = (), height: int = 240) -> np.ndarray:
    """One RGB canvas: cameras left to right (labelled), then a text band below with `lines`."""
    if not images:
        raise ValueError('compose_frame needs at least one camera image')
    tiles = []
    for name, image in images.items():
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'camera {name}: expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
        scale = height / image.shape[0]
        tile = cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
        tile = np.ascontiguousarray(tile)
        _text(tile, name, (4, 14), 0.4)
        tiles.append(tile)
    row = np.concatenate(tiles, axis=1)
    band = np.zeros((14 + 16 * max(1, len(lines)), row.shape[1], 3), np.uint8)
    for i, line in enumerate(lines):
        _text(band, line, (6, 16 + 16 * i), 0.45)
    return np.concatenate([row, band], axis=0)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    """White text with a dark outline, readable on any background."""
    cv2.putText(canvas, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


class EpisodeRecorder:
    """Collects composed frames of one episode; writes a video and/or a contact sheet."""

    def __init__(self, height: int = 240, max_frames: int = 2000) -> None:
        self.height = height
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []

    def add(self, images: Mapping[str, np.ndarray], lines: Sequence[str] = ()) -> None:
        if len(self.frames) < self.max_frames:
            self.frames.append(compose_frame(images, lines, self.height))

    def write_video(self, path: str | Path, fps: float = 15.0) -> Path:
        if not self.frames:
            raise ValueError('no frames recorded')
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = self.frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
        if not writer.isOpened():
            raise OSError(f'cannot open a video writer for {path}')
        try:
            for frame in self.frames:
                if frame.shape[:2] != (h, w):
                    frame = cv2.resize(frame, (w, h))
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        return path

    def contact_sheet(self, count: int = 12, columns: int = 2) -> np.ndarray:
        """`count` evenly spaced frames (first and last included) in a grid, RGB."""
        if not self.frames:
            raise ValueError('no frames recorded')
        idx = np.unique(np.linspace(0, len(self.frames) - 1, min(count, len(self.frames))).round().astype(int))
        picked = [self.frames[i] for i in idx]
        h, w = picked[0].shape[:2]
        picked = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h)) for f in picked]
        while len(picked) % columns:
            picked.append(np.zeros_like(picked[0]))
        rows = [np.concatenate(picked[i : i + columns], axis=1) for i in range(0, len(picked), columns)]
        return np.concatenate(rows, axis=0)

    def write_contact_sheet(self, path: str | Path, count: int = 12, columns: int = 2) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(self.contact_sheet(count, columns), cv2.COLOR_RGB2BGR)):
            raise OSError(f'cannot write {path}')
        return path
