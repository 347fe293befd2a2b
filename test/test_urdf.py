"""Shipped URDFs: they parse, match the rig configs, and (ALOHA) agree with the MuJoCo model."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import load_rig, resolve_share_relative
from bimanual_vla.urdf_model import UrdfError, load_urdf, matrix_to_rpy, parse_urdf, rpy_to_matrix

RIGS_WITH_URDF = ['so101_bimanual', 'koch_bimanual', 'aloha_sim']


@pytest.mark.parametrize('rig_name', RIGS_WITH_URDF)
def test_urdf_matches_rig_config(rig_name: str) -> None:
    rig = load_rig(rig_name)
    model = load_urdf(resolve_share_relative(rig.urdf))
    assert set(rig.all_joint_names()) == set(model.actuated_joints)
    for arm in rig.arms:
        for joint in arm.joints:
            urdf_joint = model.joints[f'{arm.name}_{joint.name}']
            assert urdf_joint.lower == pytest.approx(joint.lower, abs=1e-4), urdf_joint.name
            assert urdf_joint.upper == pytest.approx(joint.upper, abs=1e-4), urdf_joint.name
    links = set(model.links)
    for cam in rig.cameras:
        assert f'{cam.name}_optical_frame' in links


def test_rpy_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        rpy = rng.uniform([-np.pi, -np.pi / 2 + 0.01, -np.pi], [np.pi, np.pi / 2 - 0.01, np.pi])
        rot = rpy_to_matrix(*rpy)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rpy_to_matrix(*matrix_to_rpy(rot)), rot, atol=1e-9)


def test_bad_urdf_is_reported() -> None:
    import xml.etree.ElementTree as ET

    two_roots = ET.fromstring('<robot name="r"><link name="a"/><link name="b"/></robot>')
    with pytest.raises(UrdfError, match='exactly one root link'):
        parse_urdf(two_roots)
    unknown = ET.fromstring(
        '<robot name="r"><link name="a"/><joint name="j" type="revolute"><parent link="a"/>'
        '<child link="zz"/></joint></robot>'
    )
    with pytest.raises(UrdfError, match="unknown link 'zz'"):
        parse_urdf(unknown)


def test_aloha_urdf_forward_kinematics_matches_mujoco() -> None:
    import mujoco

    from bimanual_vla.urdf_from_mjcf import aloha_model_path

    rig = load_rig('aloha_sim')
    urdf = load_urdf(resolve_share_relative(rig.urdf))
    model = mujoco.MjModel.from_xml_path(str(aloha_model_path()))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(7)
    bodies = {
        'gripper_link': 'gripper_link',
        'left_finger_link': 'left_finger_link',
        'right_finger_link': 'right_finger_link',
    }
    worst = 0.0
    for _ in range(25):
        positions: dict[str, float] = {}
        for arm in rig.arms:
            prefix = f'vx300s_{arm.name}'
            for joint in arm.joints:
                q = float(rng.uniform(joint.lower, joint.upper))
                positions[f'{arm.name}_{joint.name}'] = q
                mj_joint = 'left_finger' if joint.name == 'gripper' else joint.name
                data.qpos[model.jnt_qposadr[model.joint(f'{prefix}/{mj_joint}').id]] = q
            data.qpos[model.jnt_qposadr[model.joint(f'{prefix}/right_finger').id]] = -positions[f'{arm.name}_gripper']
        mujoco.mj_kinematics(model, data)
        poses = urdf.forward_kinematics(positions)
        for arm in rig.arms:
            for mj_body, link in bodies.items():
                expected = data.xpos[model.body(f'vx300s_{arm.name}/{mj_body}').id]
                got = poses[f'{arm.name}_{link}'][:3, 3]
                worst = max(worst, float(np.linalg.norm(got - expected)))
    assert worst < 0.005, f'URDF and MuJoCo disagree by {worst * 1000:.2f} mm'


def test_batched_link_poses_equal_the_per_configuration_walk() -> None:
    """`link_poses` (all chunk steps at once, used for the rviz gripper paths) is the same FK."""
    rig = load_rig('aloha_sim')
    urdf = load_urdf(resolve_share_relative(rig.urdf))
    rng = np.random.default_rng(3)
    names = [f'{a.name}_{j.name}' for a in rig.arms for j in a.joints]
    lower = np.array([j.lower for a in rig.arms for j in a.joints])
    upper = np.array([j.upper for a in rig.arms for j in a.joints])
    q = rng.uniform(lower, upper, size=(20, len(names)))
    for link in ('left_gripper_link', 'right_left_finger_link', 'right_right_finger_link'):  # the fingers mimic
        batched = urdf.link_poses(urdf.chain(link), {n: q[:, i] for i, n in enumerate(names)})
        assert batched.shape == (20, 4, 4)
        walked = np.stack([urdf.forward_kinematics(dict(zip(names, row, strict=True)))[link] for row in q])
        np.testing.assert_allclose(batched, walked, atol=1e-12)
        assert np.ptp(batched[:, :3, 3], axis=0).max() > 0.05  # the configurations do move the link
    with pytest.raises(UrdfError, match='no link'):
        urdf.chain('no_such_link')
