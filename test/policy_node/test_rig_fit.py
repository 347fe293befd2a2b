"""Which arms and cameras of a rig a checkpoint drives (policy_node/rig_fit.py)."""

from __future__ import annotations

import pytest

from bimanual_vla.config import ConfigError, load_rig
from bimanual_vla.policy_node.rig_fit import check_cameras, commanded_arms

LEFT = ['left_waist', 'left_shoulder', 'left_elbow', 'left_forearm_roll', 'left_wrist_angle', 'left_wrist_rotate',
        'left_gripper']  # fmt: skip


def test_an_arm_the_checkpoint_covers_is_commanded_with_its_columns_and_one_it_lacks_is_not() -> None:
    rig = load_rig('aloha_sim')
    warnings: list[str] = []
    joints = ['right_waist', *LEFT]  # one right joint first: columns follow the checkpoint's order
    with pytest.raises(ConfigError, match=r"covers arm 'right' only partly \(missing \['right_elbow'"):
        commanded_arms(rig, joints, warnings.append)
    arms = commanded_arms(rig, LEFT, warnings.append)
    assert list(arms) == ['left']
    assert arms['left'][0] == LEFT and arms['left'][1].tolist() == list(range(7))
    assert warnings == ["arm 'right' is not in the checkpoint: it will not be commanded"]


def test_a_checkpoint_joint_or_camera_the_rig_lacks_is_refused() -> None:
    rig = load_rig('aloha_sim')
    with pytest.raises(ConfigError, match=r"checkpoint joints \['left_tail'\] are not joints of rig 'aloha_sim'"):
        commanded_arms(rig, [*LEFT, 'left_tail'], print)
    check_cameras(rig, ['top', 'left_wrist'])
    with pytest.raises(ConfigError, match=r"checkpoint expects cameras \['front'\] that rig 'aloha_sim' does not"):
        check_cameras(rig, ['top', 'front'])


def test_a_checkpoint_of_another_rig_is_refused_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as err:
        commanded_arms(load_rig('so101_bimanual'), LEFT, print)  # the ALOHA's joints on an SO-101 (gripper: both)
    assert str(err.value) == (
        "checkpoint joints ['left_waist', 'left_shoulder', 'left_elbow', 'left_forearm_roll', ... 6 in all] "
        "are not joints of rig 'so101_bimanual'"
    )
