"""Image preprocessing (resize with padding, [-1, 1]) and state/action normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimanual_vla.policy_node.checkpoint import FeatureStats
from bimanual_vla.policy_node.normalize import Normalizer, pad_last
from bimanual_vla.policy_node.preprocess import (
    ObservationError,
    crop_image,
    image_to_model,
    images_to_model,
    resize_with_pad,
    resize_with_pad_geometry,
)


def test_landscape_image_is_letterboxed_top_and_bottom() -> None:
    image = np.full((240, 320, 3), 255, dtype=np.uint8)
    out = image_to_model('base', image, (32, 32))
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    # 240x320 scales by 0.1 to 24x32, centred: 4 black rows above and below
    assert resize_with_pad_geometry(240, 320, 32, 32) == (24, 32, 4, 0)
    np.testing.assert_array_equal(out[:, :4, :], -1.0)
    np.testing.assert_array_equal(out[:, 28:, :], -1.0)
    np.testing.assert_array_equal(out[:, 4:28, :], 1.0)


def test_portrait_image_is_pillarboxed_left_and_right() -> None:
    image = np.full((100, 50, 3), 255, dtype=np.uint8)
    out = image_to_model('wrist', image, (40, 40))
    assert resize_with_pad_geometry(100, 50, 40, 40) == (40, 20, 0, 10)
    np.testing.assert_array_equal(out[:, :, :10], -1.0)
    np.testing.assert_array_equal(out[:, :, 30:], -1.0)
    np.testing.assert_array_equal(out[:, :, 10:30], 1.0)


def test_resized_content_matches_opencv_area_resize_and_value_scaling() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = image_to_model('base', image, (48, 48))
    new_h, new_w, top, left = resize_with_pad_geometry(240, 320, 48, 48)
    expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(out[:, top : top + new_h, left : left + new_w], expected.transpose(2, 0, 1), atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_values_map_0_to_minus_1_and_255_to_plus_1_with_rgb_channels_first() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red
    image[..., 2] = 51
    out = image_to_model('c', image, (8, 8))
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1], -1.0)
    np.testing.assert_allclose(out[2], 51 / 127.5 - 1.0, rtol=1e-6)


def test_upscaling_a_small_image_fills_the_canvas() -> None:
    image = np.full((10, 10, 3), 7, dtype=np.uint8)
    canvas = resize_with_pad(image, 30, 30)
    assert canvas.shape == (30, 30, 3)
    np.testing.assert_array_equal(canvas, 7)


@pytest.mark.parametrize(
    ('image', 'message'),
    [
        (np.zeros((32, 32), dtype=np.uint8), 'HxWx3'),
        (np.zeros((32, 32, 4), dtype=np.uint8), 'HxWx3'),
        (np.zeros((32, 32, 3), dtype=np.float32), 'uint8'),
        (np.zeros((0, 32, 3), dtype=np.uint8), 'empty'),
        ([[0, 0, 0]], 'numpy array'),
    ],
)
def test_bad_images_are_refused_naming_the_camera(image: object, message: str) -> None:
    with pytest.raises(ObservationError, match=rf"camera 'left_wrist'.*{message}"):
        image_to_model('left_wrist', image, (32, 32))


def test_missing_camera_is_named() -> None:
    frames = {'top': np.zeros((4, 4, 3), dtype=np.uint8)}
    with pytest.raises(ObservationError, match='left_wrist'):
        images_to_model(frames, ['top', 'left_wrist'], (8, 8))
    stacked = images_to_model({**frames, 'left_wrist': frames['top']}, ['top', 'left_wrist'], (8, 8))
    assert stacked.shape == (2, 3, 8, 8)


STATS = FeatureStats(mean=[0.5, -1.0, 0.0], std=[0.25, 2.0, 1e-3], q01=[0.0, -3.0, -0.01], q99=[1.0, 1.0, 0.01])


def test_mean_std_normalisation_values() -> None:
    norm = Normalizer(STATS, 'mean_std')
    np.testing.assert_allclose(norm.normalize(np.array([0.75, 1.0, 0.0])), [1.0, 1.0, 0.0], rtol=1e-4)


def test_quantile_normalisation_maps_q01_q99_to_minus_one_plus_one() -> None:
    norm = Normalizer(STATS, 'quantile')
    np.testing.assert_allclose(norm.normalize(np.array(STATS.q01)), -1.0, atol=1e-9)
    np.testing.assert_allclose(norm.normalize(np.array(STATS.q99)), 1.0, atol=1e-3)
    np.testing.assert_allclose(norm.normalize(np.array([0.5, -1.0, 0.0])), 0.0, atol=1e-3)


@settings(max_examples=50, deadline=None)
@given(
    mode=st.sampled_from(['mean_std', 'quantile']),
    values=st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6),
)
def test_normalisation_round_trips(mode: str, values: list[float]) -> None:
    norm = Normalizer(STATS, mode)
    x = np.asarray(values).reshape(2, 3)
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-9)


def test_wrong_width_and_unknown_mode_are_refused() -> None:
    with pytest.raises(ValueError, match='expected 3 values'):
        Normalizer(STATS, 'mean_std').normalize(np.zeros(4))
    with pytest.raises(ValueError, match='unknown normalisation mode'):
        Normalizer(STATS, 'minmax')


def test_pad_to_model_width_and_back() -> None:
    x = np.arange(14, dtype=np.float64).reshape(1, 14)
    padded = pad_last(x, 32)
    assert padded.shape == (1, 32)
    np.testing.assert_array_equal(padded[:, :14], x)
    np.testing.assert_array_equal(padded[:, 14:], 0.0)
    with pytest.raises(ValueError, match='do not fit'):
        pad_last(np.zeros(33), 32)


def test_crop_cuts_the_box_before_resizing() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    image[100:110, 150:160] = (255, 0, 0)  # a 10x10 red cube
    box = (130, 80, 64, 64)
    assert crop_image('top', image, box).shape == (64, 64, 3)
    whole = image_to_model('top', image, (32, 32))
    cropped = image_to_model('top', image, (32, 32), crop=box)
    # the cube covers ~1 model pixel of the whole frame but 5x5 of the crop, where the crop puts it
    assert (cropped[0] > 0.9).sum() == 25 and (whole[0] > 0.9).sum() <= 1
    assert np.all(cropped[0, 10:15, 10:15] > 0.9)
    stacked = images_to_model({'top': image, 'wrist': image}, ['top', 'wrist'], (32, 32), {'top': box})
    assert np.array_equal(stacked[0], cropped) and np.array_equal(stacked[1], whole)


@pytest.mark.parametrize('box', [(300, 0, 64, 64), (0, 200, 64, 64), (-1, 0, 10, 10), (0, 0, 0, 10)])
def test_crop_outside_the_image_is_refused_naming_the_camera(box) -> None:
    with pytest.raises(ObservationError, match=r"camera 'top': crop box .* does not fit in its 320x240 image"):
        image_to_model('top', np.zeros((240, 320, 3), np.uint8), (32, 32), crop=box)
