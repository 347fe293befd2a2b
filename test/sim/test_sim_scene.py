"""The MuJoCo scene without ROS: seeding, joint mapping, command safety, rendering, episode media."""

from __future__ import annotations

import gym_aloha  # noqa: F401  (the scene's assets come from it)
import numpy as np
import pytest

from bimanual_vla.config import load_rig
from bimanual_vla.sim.scene import (
    CUBE_RANGE,
    PEG_RANGE,
    SOCKET_RANGE,
    SceneRenderer,
    SimScene,
    rig_cameras,
    sample_object_poses,
)

RIG = load_rig('aloha_sim')


def test_same_seed_same_initial_state_and_different_seeds_differ() -> None:
    a, b, c = SimScene(RIG, seed=7), SimScene(RIG, seed=7), SimScene(RIG, seed=8)
    assert np.array_equal(a.data.qpos, b.data.qpos)
    assert not np.array_equal(a.data.qpos, c.data.qpos)
    # physics is deterministic too: same commands, same state after a second
    for scene in (a, b):
        scene.command('right', [0.3, -0.5, 0.8, 0.1, 0.2, -0.1, 0.05])
        for _ in range(50):
            scene.step()
    assert np.array_equal(a.data.qpos, b.data.qpos)
    # reset(seed) reproduces the initial state of a fresh scene
    a.reset(8)
    assert np.array_equal(a.data.qpos, c.data.qpos) and a.steps == 0 and a.reward == 0


@pytest.mark.parametrize('seed', range(20))
def test_object_poses_within_gym_aloha_ranges(seed: int) -> None:
    cube = sample_object_poses('transfer_cube', seed)['red_box_joint']
    assert CUBE_RANGE[0][0] <= cube[0] <= CUBE_RANGE[0][1] and CUBE_RANGE[1][0] <= cube[1] <= CUBE_RANGE[1][1]
    ins = sample_object_poses('insertion', seed)
    peg, socket = ins['red_peg_joint'], ins['blue_socket_joint']
    assert PEG_RANGE[0][0] <= peg[0] <= PEG_RANGE[0][1] and PEG_RANGE[1][0] <= peg[1] <= PEG_RANGE[1][1]
    assert SOCKET_RANGE[0][0] <= socket[0] <= SOCKET_RANGE[0][1]
    assert list(cube[3:]) == [1.0, 0.0, 0.0, 0.0]


def test_start_pose_and_object_placed_from_seed() -> None:
    scene = SimScene(RIG, task='insertion', seed=3)
    expected = sample_object_poses('insertion', 3)
    assert np.allclose(scene.object_pose('red_peg_joint'), expected['red_peg_joint'])
    assert np.allclose(scene.object_pose('blue_socket_joint'), expected['blue_socket_joint'])
    assert np.allclose(scene.joint_positions('left')[:6], [0, -0.96, 1.16, 0, -0.3, 0])


def test_commands_clamped_to_rig_limits_and_rate_limited() -> None:
    scene = SimScene(RIG, seed=0)
    arm = RIG.arm('right')
    upper = np.array([j.upper for j in arm.joints])
    goal = scene.command('right', {'shoulder': 5.0, 'gripper': 1.0, 'elbow': -9.0})
    assert goal[1] == pytest.approx(upper[1]) and goal[6] == pytest.approx(0.057) and goal[2] == pytest.approx(-1.76278)
    ctrl_before = scene.data.ctrl.copy()
    scene.step()
    moved = np.abs(scene.data.ctrl - ctrl_before)
    assert moved.max() <= arm.max_step_rad + 1e-12  # no jump bigger than the driver's max step
    for _ in range(150):
        scene.step()
    q = scene.joint_positions('right')
    assert q[1] <= upper[1] + 0.02 and q[1] == pytest.approx(upper[1], abs=0.05)


def test_non_finite_wrong_length_and_unknown_joints_are_rejected_keeping_the_goal() -> None:
    scene = SimScene(RIG, seed=0)
    before = scene.goal('left')
    for bad in ([0.0] * 6 + [float('nan')], [0.0] * 6, {'nose': 1.0}, {'waist': float('inf')}):
        with pytest.raises(ValueError):
            scene.command('left', bad)
        assert np.array_equal(scene.goal('left'), before)
    with pytest.raises(ValueError, match='unknown arm'):
        scene.command('middle', [0.0] * 7)


def test_commands_rate_limited_by_max_velocity() -> None:
    # 1 rad/s at the rig's 50 Hz: 0.02 rad a control tick, below max_step_rad (0.1)
    arms = [a.model_copy(update={'max_velocity_rad_s': 1.0}) for a in RIG.arms]
    scene = SimScene(RIG.model_copy(update={'arms': arms}), seed=0)
    scene.command('right', {'shoulder': 1.0})
    ctrl_before = scene.data.ctrl.copy()
    scene.step()
    assert np.abs(scene.data.ctrl - ctrl_before).max() == pytest.approx(1.0 / RIG.control_rate_hz)


def test_gripper_drives_both_fingers_mirrored() -> None:
    scene = SimScene(RIG, seed=0)
    scene.command('left', {'gripper': 0.05})
    for _ in range(60):
        scene.step()
    m, d = scene.model, scene.data
    left = d.qpos[m.jnt_qposadr[m.joint('vx300s_left/left_finger').id]]
    right = d.qpos[m.jnt_qposadr[m.joint('vx300s_left/right_finger').id]]
    assert left == pytest.approx(0.05, abs=2e-3) and right == pytest.approx(-0.05, abs=2e-3)
    assert scene.joint_positions('left')[6] == pytest.approx(left)


def test_hold_freezes_goal_at_measured_pose() -> None:
    scene = SimScene(RIG, seed=0)
    scene.command('left', {'waist': 1.0})
    for _ in range(5):
        scene.step()
    scene.hold()
    held = scene.joint_positions('left')
    for _ in range(50):
        scene.step()
    assert np.allclose(scene.joint_positions('left')[:3], held[:3], atol=0.02)
    assert abs(held[0]) < 0.9  # it really stopped short of the commanded 1.0


def test_renderer_publishes_only_requested_cameras_with_the_cube_visible() -> None:
    scene = SimScene(RIG, seed=0)
    renderer = SceneRenderer(scene.model, rig_cameras(RIG, {'top': (160, 120)}))
    try:
        images = renderer.render_all(scene.data)
    finally:
        renderer.close()
    assert set(images) == {'top', 'left_wrist', 'right_wrist'}
    assert images['top'].shape == (120, 160, 3) and images['left_wrist'].shape == (240, 320, 3)
    assert images['top'].dtype == np.uint8
    top = images['top'].astype(int)
    red = (top[..., 0] > 150) & (top[..., 1] < 60) & (top[..., 2] < 60)
    assert 2 <= red.sum() < 200  # the red cube, small, seen from above
    assert scene.model.vis.quality.offsamples == 0


def test_episode_video_and_contact_sheet(tmp_path) -> None:
    import cv2

    from bimanual_vla.learning.episode_video import EpisodeRecorder, compose_frame

    rng = np.random.default_rng(0)
    cams = {'top': rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), 'wrist': np.zeros((120, 160, 3), np.uint8)}
    frame = compose_frame(cams, ['subtask: grasp the cube'], height=120)
    assert frame.shape[1] == 160 + 160 and frame.shape[0] > 120
    assert frame[120:, :, :].max() == 255  # the text band has white text
    with pytest.raises(ValueError):
        compose_frame({'top': np.zeros((10, 10), np.uint8)})
    rec = EpisodeRecorder(height=120)
    for _ in range(7):
        rec.add(cams, ['a line'])
    sheet = rec.write_contact_sheet(tmp_path / 'sheet.png', count=4, columns=2)
    assert cv2.imread(str(sheet)).shape == (2 * frame.shape[0], 2 * frame.shape[1], 3)
    video = rec.write_video(tmp_path / 'ep.mp4', fps=10)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    cap.release()
