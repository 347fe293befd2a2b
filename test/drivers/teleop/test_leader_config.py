"""The rig file's `leaders:` list: strict fields, and cross-checks against the rig's arms, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bimanual_vla.config import ConfigError, load_rig, resolve_rig_path

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']


def rig_with_leader(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    leader = {
        'name': 'left_leader',
        'protocol': 'feetech',
        'port': '/dev/ttyLEADER',
        'follower': 'left',
        'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)],
        'gripper': {'joint': 'gripper'},
    }
    data['leaders'] = [{**leader, **changes}]
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('rig', ['so101_bimanual', 'so101_sim', 'koch_bimanual'])
def test_shipped_rigs_have_a_leader_per_arm(rig: str) -> None:
    cfg = load_rig(rig)
    assert sorted(lead.follower for lead in cfg.leaders) == ['left', 'right']
    for lead in cfg.leaders:
        assert lead.protocol == cfg.arm(lead.follower).protocol
        assert [lead.follower_joint(j) for j in lead.body_joints()] == NAMES[:5]
        assert lead.gripper is not None and lead.gripper.joint == 'gripper'


def test_a_leader_maps_by_name_unless_joint_map_says_otherwise(tmp_path: Path) -> None:
    lead = load_rig(rig_with_leader(tmp_path, joint_map={'wrist_roll': 'wrist_roll'})).leader('left_leader')
    assert lead.follower_joint('elbow_flex') == 'elbow_flex' and lead.body_joints() == NAMES[:5]
    assert lead.read_rate_hz == 100.0 and lead.start_tolerance_rad == 0.2 and lead.timeout_s == 0.1


@pytest.mark.parametrize(
    ('changes', 'line'),
    [
        (
            {'follower': 'middle'},
            "leaders: leader left_leader: follower 'middle' is not an arm of this rig ['left', 'right']",
        ),
        ({'port': '/dev/ttyACM1'}, 'leaders: leader left_leader: port /dev/ttyACM1 is also the port of arm right'),
        ({'joint_map': {'elbow': 'elbow_flex'}}, "leaders[0]: joint_map names leader joint(s) ['elbow'] the leader"),
        (
            {'joint_map': {'elbow_flex': 'elbow'}},
            "leaders: leader left_leader: follower joint(s) ['elbow'] are not joints",
        ),
        (
            {'joint_map': {'elbow_flex': 'wrist_flex'}},
            'leaders: duplicate follower joint driven by leader left_leader: wrist_flex',
        ),
        (
            {'joint_map': {'gripper': 'gripper'}},
            "leaders[0]: 'gripper' is the gripper: map it with `gripper`, not joint_map",
        ),
        ({'gripper': {'joint': 'trigger'}}, "leaders[0]: gripper.joint 'trigger' is not one of the joints"),
        (
            {'gripper': {'leader_closed': 0.5, 'leader_open': 0.5}},
            'leaders[0].gripper: leader_closed and leader_open are both',
        ),
        (
            {'gripper': {'spring_goal_current': 5000}},
            'leaders[0].gripper.spring_goal_current: Input should be less than',
        ),
        ({'baud_rate': 1000000}, 'leaders[0].baud_rate: unknown field (check the spelling)'),
        ({'protocol': 'sim'}, "leaders[0].protocol: Input should be 'feetech' or 'dynamixel'"),
        ({'port': ''}, 'leaders[0].port: String should have at least 1 character'),
        ({'start_tolerance_rad': 1.0}, 'leaders[0].start_tolerance_rad: must be in (0, 0.5] rad, got 1'),
        ({'timeout_s': '0.1'}, 'leaders[0].timeout_s: Input should be a valid number'),
        ({'read_rate_hz': 5000.0}, 'leaders[0].read_rate_hz: must be in [10, 1000] Hz, got 5000'),
        ({'joints': [{'id': 1, 'name': 'a'}, {'id': 1, 'name': 'b'}]}, 'leaders[0].joints: duplicate servo id: 1'),
    ],
)
def test_a_bad_leader_is_one_line_naming_file_and_field(tmp_path: Path, changes: dict, line: str) -> None:
    path = rig_with_leader(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_rig(path)
    text = str(err.value)
    assert text.startswith(f'{path}: {line}'), text
    assert '\n' not in text


def test_two_leaders_for_one_arm_are_refused(tmp_path: Path) -> None:
    path = rig_with_leader(tmp_path)
    data = yaml.safe_load(path.read_text())
    data['leaders'].append({**data['leaders'][0], 'name': 'spare', 'port': '/dev/ttyOTHER'})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r'leaders: duplicate follower \(one leader per arm\): left$'):
        load_rig(path)
