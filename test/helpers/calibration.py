"""A one-arm SO-101 rig file and a LeRobot SO-101 calibration, for the calibration tests.

Shared by test/drivers/servo/test_calibration.py and test_calibration_lerobot.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

JOINTS = [
    {'id': 1, 'name': 'shoulder_pan', 'lower': -1.9, 'upper': 1.9},
    {'id': 2, 'name': 'shoulder_lift', 'lower': -1.7, 'upper': 1.7},
    {'id': 3, 'name': 'elbow_flex', 'lower': -1.6, 'upper': 1.6},
    {'id': 4, 'name': 'wrist_flex', 'lower': -1.6, 'upper': 1.6},
    {'id': 5, 'name': 'wrist_roll', 'lower': -2.7, 'upper': 2.8},
    {'id': 6, 'name': 'gripper', 'lower': -0.17, 'upper': 1.7},
]

# A LeRobot SO-101 follower calibration in the current format (values as such files look).
LEROBOT_SO101 = {
    'shoulder_pan': {'id': 1, 'drive_mode': 0, 'homing_offset': -1470, 'range_min': 758, 'range_max': 3292},
    'shoulder_lift': {'id': 2, 'drive_mode': 0, 'homing_offset': 157, 'range_min': 612, 'range_max': 3401},
    'elbow_flex': {'id': 3, 'drive_mode': 0, 'homing_offset': -1276, 'range_min': 871, 'range_max': 3081},
    'wrist_flex': {'id': 4, 'drive_mode': 0, 'homing_offset': 1989, 'range_min': 904, 'range_max': 3207},
    'wrist_roll': {'id': 5, 'drive_mode': 0, 'homing_offset': -542, 'range_min': 142, 'range_max': 3966},
    'gripper': {'id': 6, 'drive_mode': 0, 'homing_offset': 1407, 'range_min': 2031, 'range_max': 3476},
}


def write_rig(
    tmp_path: Path, *, calibration: str | None = None, protocol: str = 'feetech', port: str = '/dev/null'
) -> Path:
    """`tmp_path/rig.yaml`: arm `left` with JOINTS on `port`, with `calibration` if given."""
    arm = {'name': 'left', 'protocol': protocol, 'port': port, 'gripper': 'gripper', 'joints': JOINTS}
    if calibration is not None:
        arm['calibration'] = calibration
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump({'name': 'test_rig', 'urdf': 'urdf/none.urdf', 'arms': [arm]}))
    return path
