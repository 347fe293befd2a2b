"""Which of a rig's arms and cameras a checkpoint drives: checked once, when the policy node starts.

No ROS here: the node passes its logger's ``warning`` for the arms it will not command.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bimanual_vla.config import ConfigError, RigConfig


def commanded_arms(
    rig: RigConfig, joint_names: list[str], warn: Callable[[str], object]
) -> dict[str, tuple[list[str], np.ndarray]]:
    """arm -> (qualified joint names, their columns in the chunk), for arms the checkpoint fully covers.

    A checkpoint joint the rig lacks, or an arm the checkpoint covers only partly, is a ConfigError;
    an arm it does not cover at all is left alone (``warn`` says so).
    """
    rig_joints = set(rig.all_joint_names())
    unknown = [n for n in joint_names if n not in rig_joints]
    if unknown:
        raise ConfigError(f'checkpoint joints {_some(unknown)} are not joints of rig {rig.name!r}')
    arms: dict[str, tuple[list[str], np.ndarray]] = {}
    cols = {n: i for i, n in enumerate(joint_names)}
    for arm in rig.arms:
        names = arm.qualified_joint_names()
        covered = [n for n in names if n in cols]
        if covered and len(covered) != len(names):
            missing = sorted(set(names) - set(covered))
            raise ConfigError(f'checkpoint covers arm {arm.name!r} only partly (missing {missing})')
        if covered:
            arms[arm.name] = (names, np.array([cols[n] for n in names]))
        else:
            warn(f'arm {arm.name!r} is not in the checkpoint: it will not be commanded')
    return arms


def _some(names: list[str], shown: int = 4) -> str:
    """`names` as a list, the first few of a long one: an error stays one readable line."""
    if len(names) <= shown:
        return str(names)
    return f'{str(names[:shown])[:-1]}, ... {len(names)} in all]'


def check_cameras(rig: RigConfig, camera_names: list[str]) -> None:
    """ConfigError if the checkpoint expects a camera the rig does not have."""
    rig_cams = {c.name for c in rig.cameras}
    missing = [c for c in camera_names if c not in rig_cams]
    if missing:
        raise ConfigError(f'checkpoint expects cameras {missing} that rig {rig.name!r} does not have')
