"""The LeRobot export's videos: encoded as LeRobot encodes them, described as LeRobot describes them.

LeRobot's dataset tools rebuild an encoder from each video feature's ``info`` in meta/info.json
(``encoder_config_from_video_info`` in ``src/lerobot/configs/video.py``) and refuse any
``video.codec`` outside ``VALID_VIDEO_CODECS`` (h264, hevc, libsvtav1, libaom-av1 and hardware
encoders; ``av1`` is an alias of libsvtav1): ``delete_episodes`` and ``split_dataset`` re-encode
the kept frames with that encoder. So the export encodes with PyAV as LeRobot's
``encode_video_frames`` does, with the defaults of its ``RGBEncoderConfig``: libsvtav1, yuv420p,
GOP 2 (a keyframe every other frame, for random access while training), CRF 30, preset 12,
fast-decode 0 (``h264``, i.e. libx264, on request), and writes the info block
``get_video_info`` writes in ``src/lerobot/datasets/video_utils.py``: the stream's height, width,
canonical codec name, pixel format, integer fps and channels, ``has_audio``, the encoder's other
fields as ``video.<field>`` and ``is_depth_map``. Paths checked at huggingface/lerobot 7427f318
(v0.6.2); see docs/lerobot.md.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

CODECS = ('libsvtav1', 'h264')
"""Encoders the export offers: LeRobot's default (AV1) and its h264 option, both in the av wheel."""


def encoder_settings(vcodec: str) -> dict[str, Any]:
    """LeRobot's RGBEncoderConfig defaults for `vcodec` (its dataclass fields, as info.json stores them)."""
    if vcodec not in CODECS:
        raise ValueError(f'video codec must be one of {CODECS}, got {vcodec!r}')
    return {
        'vcodec': vcodec,
        'pix_fmt': 'yuv420p',
        'g': 2,
        'crf': 30,
        'preset': 12 if vcodec == 'libsvtav1' else None,  # LIBSVTAV1_DEFAULT_PRESET; none for h264
        'fast_decode': 0,
        'video_backend': 'pyav',
        'extra_options': {},
    }


def codec_options(settings: dict[str, Any]) -> dict[str, str]:
    """``VideoEncoderConfig.get_codec_options(as_strings=True)`` for our two codecs."""
    opts = {'g': str(settings['g']), 'crf': str(settings['crf'])}
    if settings['vcodec'] == 'libsvtav1':
        opts['preset'] = str(settings['preset'])
        opts['svtav1-params'] = f'fast-decode={max(0, min(2, settings["fast_decode"]))}'
    elif settings['preset'] is not None:
        opts['preset'] = str(settings['preset'])
    return opts


class VideoWriter:
    """One camera's video file: RGB frames in, encoded at `fps` with `settings` (see encoder_settings)."""

    def __init__(self, path: Path, fps: int, size: tuple[int, int], settings: dict[str, Any]) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.size = size  # (width, height)
        self.settings = settings
        self._container = av.open(str(path), 'w')
        self._stream = self._container.add_stream(
            settings['vcodec'], rate=Fraction(fps), options=codec_options(settings)
        )
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = settings['pix_fmt']
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format='rgb24')
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


def video_info(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The feature ``info`` block LeRobot's ``get_video_info(path, encoder)`` writes for `path`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info: dict[str, Any] = {
            'video.height': stream.height,
            'video.width': stream.width,
            'video.codec': stream.codec.canonical_name,
            'video.pix_fmt': stream.pix_fmt,
            'video.fps': int(stream.base_rate),
            'video.channels': len(av.VideoFormat(stream.pix_fmt).components),
        }
        has_audio = bool(container.streams.audio)
    info['has_audio'] = has_audio
    for name, value in settings.items():
        if name != 'vcodec':
            info.setdefault(f'video.{name}', value)
    info['is_depth_map'] = False
    return info
