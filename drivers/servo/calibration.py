"""Per-arm calibration: raw servo ticks <-> joint radians, our JSON format, LeRobot import.

A servo reports an angle in ticks (4096 per turn on the STS3215 and Dynamixel X
series) relative to wherever its horn happened to be mounted. Calibration says,
for every joint, which tick value is the joint's zero (the pose the URDF calls
0 rad), which way is positive, and which tick range the mechanism can actually
reach. The format is our own, versioned, and validated with pydantic so a
hand-edited or truncated file fails at start with the file and field named,
instead of driving an arm with wrong numbers.

Ticks here are *present-position* ticks, i.e. what the servo reports after its
own homing-offset register has been applied. The file records that register's
value too (``homing_offset``) so the driver can check, and restore, it: the
ranges are only valid with the same offset in the servo.

LeRobot's calibration files (the current per-motor dict and the older
list-based format) are accepted as input and converted on load.

No ROS imports: used by the driver node, the ``calibrate`` command and tests.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from bimanual_vla.config import ArmConfig

FORMAT_NAME = 'bimanual_vla.calibration'
FORMAT_VERSION = 1
DEFAULT_RESOLUTION = 4096

Source = Literal['calibrate', 'lerobot', 'lerobot_legacy', 'identity', 'manual']


class CalibrationError(ValueError):
    """A calibration file is missing, unreadable, invalid, or does not match the rig's arm."""


class JointCalibration(BaseModel):
    """How one servo's ticks map to its joint's angle."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    id: int = Field(ge=0, le=252, description='servo id on the bus')
    homing_offset: int = Field(description="value of the servo's homing-offset register these ticks assume")
    range_min: int = Field(description='lowest present-position tick the joint reaches')
    range_max: int = Field(description='highest present-position tick the joint reaches')
    direction: Literal[1, -1] = Field(default=1, description='+1: ticks increase with the joint angle; -1: reversed')
    zero_ticks: float = Field(description='present-position tick value at which the joint is at 0 rad')
    drive_mode: Literal[0, 1] = Field(
        default=0,
        description="bit 0 of the servo's own Drive_Mode register these ticks assume (Dynamixel: 1 = the servo "
        'counts in reverse); like homing_offset, the driver puts it back if the servo holds another value',
    )

    @model_validator(mode='after')
    def _range_ordered(self) -> JointCalibration:
        if self.range_min >= self.range_max:
            raise ValueError(f'range_min ({self.range_min}) must be < range_max ({self.range_max})')
        if not math.isfinite(self.zero_ticks):
            raise ValueError('zero_ticks must be a finite number')
        return self


class ArmCalibration(BaseModel):
    """Calibration of every joint of one arm, keyed by joint name (without the arm prefix)."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    format: Literal['bimanual_vla.calibration'] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    arm: str = ''
    protocol: Literal['feetech', 'dynamixel', 'sim', ''] = ''
    resolution: int = Field(default=DEFAULT_RESOLUTION, gt=0, description='ticks per revolution')
    ticks_per_turn: int | None = Field(
        default=None,
        gt=0,
        description='ticks the angle mapping counts as 2 pi (None: resolution). LeRobot maps 360 degrees to '
        'resolution - 1 = 4095 ticks; a file imported from LeRobot keeps that, so angles equal its degrees',
    )
    source: Source = 'manual'
    created: str = ''
    joints: dict[str, JointCalibration] = Field(min_length=1)

    @property
    def is_identity(self) -> bool:
        """True when no real calibration was found: ticks are mapped with the servo's mid-point as zero."""
        return self.source == 'identity'

    # --------------------------------------------------------------- mapping

    def rad_per_tick(self) -> float:
        return 2.0 * math.pi / (self.ticks_per_turn or self.resolution)

    def to_radians(self, joint: str, ticks: int | float) -> float:
        """Joint angle (rad) for a present-position reading."""
        j = self.joints[joint]
        return j.direction * (ticks - j.zero_ticks) * self.rad_per_tick()

    def to_ticks(self, joint: str, radians: float) -> int:
        """Goal-position ticks for a joint angle, rounded and kept inside the calibrated range.

        The clamp is a last line of defence: the driver already clamps to the rig's
        joint limits, but a goal outside the range the mechanism was seen to reach
        would drive the joint into its hard stop.
        """
        if not math.isfinite(radians):
            raise ValueError(f'joint {joint}: goal {radians!r} is not finite')
        j = self.joints[joint]
        ticks = round(j.zero_ticks + j.direction * radians / self.rad_per_tick())
        return min(max(ticks, j.range_min), j.range_max)

    def position_limit_ticks(self, joint: str, lower: float, upper: float) -> tuple[int, int]:
        """The servo's (Min_Position_Limit, Max_Position_Limit) for joint limits ``lower``..``upper`` rad.

        The servo compares goals with these registers in present-position ticks, the ticks of this
        calibration, so the values are the goals the driver sends at the two limits (:meth:`to_ticks`,
        inside the calibrated range), in tick order: a reversed joint's upper limit is its minimum.
        The registers are unsigned: a tick below 0 is stored as 0.
        """
        a, b = self.to_ticks(joint, lower), self.to_ticks(joint, upper)
        return max(0, min(a, b)), max(0, a, b)

    def range_radians(self, joint: str) -> tuple[float, float]:
        """The calibrated range as (low, high) radians."""
        j = self.joints[joint]
        a, b = self.to_radians(joint, j.range_min), self.to_radians(joint, j.range_max)
        return (min(a, b), max(a, b))

    # ------------------------------------------------------------ checking

    def check_against(self, arm: ArmConfig) -> list[str]:
        """Raise CalibrationError if a rig joint is missing or has another servo id; return warnings.

        Warnings (not errors) are joint limits in the rig that reach outside the calibrated range:
        goals there are clamped to the range.
        """
        missing = [j.name for j in arm.joints if j.name not in self.joints]
        if missing:
            raise CalibrationError(
                f'calibration for arm {arm.name!r} has no entry for joint(s) {missing}; '
                f'it has {sorted(self.joints)}. Re-run `bimanual-vla calibrate` for this arm.'
            )
        wrong_ids = [
            f'{j.name}: rig id {j.id}, calibration id {self.joints[j.name].id}'
            for j in arm.joints
            if self.joints[j.name].id != j.id
        ]
        if wrong_ids:
            raise CalibrationError(f'calibration for arm {arm.name!r} has other servo ids: {"; ".join(wrong_ids)}')
        warnings = []
        for j in arm.joints:
            low, high = self.range_radians(j.name)
            if j.lower < low - 1e-6 or j.upper > high + 1e-6:
                warnings.append(
                    f'{arm.name}_{j.name}: rig limits [{j.lower:+.3f}, {j.upper:+.3f}] rad reach outside the '
                    f'calibrated range [{low:+.3f}, {high:+.3f}] rad; goals are clamped to the calibrated range'
                )
        return warnings

    # --------------------------------------------------------------- files

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode='json'), indent=2) + '\n'

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half a calibration behind."""
        target = Path(os.path.expanduser(str(path)))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + '.', suffix='.tmp', dir=target.parent)
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(self.to_json())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


# ------------------------------------------------------------------ identity


def identity_calibration(arm: ArmConfig, resolution: int = DEFAULT_RESOLUTION) -> ArmCalibration:
    """The fallback when no calibration exists: the servo's mid-point is 0 rad, full range allowed.

    This is *not* a calibration of the physical arm. Callers must say so loudly.
    """
    mid = resolution // 2
    joints = {
        j.name: JointCalibration(
            id=j.id, homing_offset=0, range_min=0, range_max=resolution - 1, direction=1, zero_ticks=mid
        )
        for j in arm.joints
    }
    return ArmCalibration(
        arm=arm.name, protocol=arm.protocol, resolution=resolution, source='identity', created=now_iso(), joints=joints
    )


# -------------------------------------------------------------------- loading


def _format_errors(path: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = '.'.join(str(p) for p in e['loc'] if not str(p).startswith('function-after')) or '<top level>'
        msg = e['msg'].removeprefix('Value error, ')
        if e['type'] == 'extra_forbidden':
            msg = 'unknown field (check the spelling)'
        lines.append(f'{path}: {loc}: {msg}')
    return '\n'.join(lines)


def parse_calibration(
    data: Any,
    *,
    where: str = '<calibration>',
    arm: ArmConfig | None = None,
    protocol: str | None = None,
    gripper: str | None = None,
    resolution: int = DEFAULT_RESOLUTION,
) -> ArmCalibration:
    """Build an ArmCalibration from decoded JSON in any accepted format.

    ``arm`` (the rig's arm) supplies the servo ids the legacy LeRobot format lacks, the
    protocol and the gripper joint's name; ``protocol``/``gripper`` override it.
    """
    if not isinstance(data, dict):
        raise CalibrationError(f'{where}: expected a JSON object, got {type(data).__name__}')
    protocol = protocol or (arm.protocol if arm is not None else '')
    gripper = gripper or (arm.gripper if arm is not None and arm.gripper else 'gripper')
    try:
        if data.get('format') == FORMAT_NAME or 'joints' in data:
            if data.get('format') not in (None, FORMAT_NAME):
                raise CalibrationError(f'{where}: format: unknown calibration format {data.get("format")!r}')
            return ArmCalibration.model_validate(data)
        if 'motor_names' in data:
            return _from_lerobot_legacy(data, arm=arm, protocol=protocol, gripper=gripper, resolution=resolution)
        if data and all(isinstance(v, dict) for v in data.values()):
            return _from_lerobot(data, arm=arm, protocol=protocol, gripper=gripper, resolution=resolution)
    except ValidationError as exc:
        raise CalibrationError(_format_errors(where, exc)) from None
    except CalibrationError as exc:
        if str(exc).startswith(where):
            raise
        raise CalibrationError(f'{where}: {exc}') from None
    raise CalibrationError(
        f'{where}: not a calibration file this driver knows: expected our format '
        f'("format": "{FORMAT_NAME}"), a LeRobot per-motor dict ({{"shoulder_pan": {{"id": 1, ...}}}}) '
        'or a legacy LeRobot file with "motor_names"'
    )


def load_calibration(
    path: str | os.PathLike[str],
    *,
    arm: ArmConfig | None = None,
    protocol: str | None = None,
    gripper: str | None = None,
) -> ArmCalibration:
    """Read and validate a calibration file in any accepted format; CalibrationError on any problem."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise CalibrationError(f'{p}: calibration file not found')
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f'{p}: cannot read: {exc}') from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f'{p}: not valid JSON: {exc}') from None
    return parse_calibration(data, where=str(p), arm=arm, protocol=protocol, gripper=gripper)


def calibration_for_arm(arm: ArmConfig, path_override: str | None = None) -> tuple[ArmCalibration, list[str]]:
    """The calibration the driver should use for ``arm`` and warnings to report.

    A configured file that exists but is invalid or does not match the arm raises
    CalibrationError: the driver must not guess. No file configured, or the file not
    there yet, gives the identity calibration and a warning that says so plainly.
    """
    path = path_override or arm.calibration
    if not path:
        return identity_calibration(arm), [
            f'arm {arm.name!r}: NO CALIBRATION configured; using the identity mapping (servo mid-point = 0 rad). '
            'Joint angles are NOT those of the URDF. Run `bimanual-vla calibrate` before using this arm.'
        ]
    expanded = Path(os.path.expanduser(path))
    if not expanded.exists():
        return identity_calibration(arm), [
            f'arm {arm.name!r}: calibration file {expanded} NOT FOUND; using the identity mapping '
            '(servo mid-point = 0 rad). Joint angles are NOT those of the URDF. '
            f'Run `bimanual-vla calibrate --arm {arm.name}` before using this arm.'
        ]
    calib = load_calibration(expanded, arm=arm)
    return calib, calib.check_against(arm)


# ------------------------------------------------------------ LeRobot import


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise CalibrationError(f'{field}: expected an integer, got {value!r}')
    return int(value)


def _from_lerobot(
    data: Mapping[str, Any], *, arm: ArmConfig | None, protocol: str, gripper: str, resolution: int
) -> ArmCalibration:
    """LeRobot's current format: ``{motor: {id, drive_mode, homing_offset, range_min, range_max}}``.

    Conventions as huggingface/lerobot has them (src/lerobot/motors/motors_bus.py
    ``MotorsBus._normalize``/``_unnormalize``; dynamixel/dynamixel.py and feetech/feetech.py):

    * ``homing_offset`` is written into the servo's register and the range is recorded in the
      resulting present-position ticks, as we do.
    * Body joints in degrees: ``(ticks - mid) * 360 / max_res`` with ``mid`` the middle of the
      range and ``max_res = resolution - 1 = 4095``: so zero at mid-range and ``ticks_per_turn``
      4095, which makes our radians LeRobot's degrees exactly. The gripper is 0-100 % of the
      range from ``range_min``: zero there, opening positive.
    * ``drive_mode`` 1: a Dynamixel bus (``apply_drive_mode = False``) has written it into the
      servo's Drive_Mode register (the Koch leader's ``elbow_flex``), so the servo already counts
      in reverse and the ticks in the file are reversed ones: no reversal in software, and
      ``drive_mode`` is kept so the driver can put the register back. A Feetech bus
      (``apply_drive_mode = True``; STS servos have no such register) reverses in software:
      ``-norm`` for joints, ``100 - norm`` for the gripper, i.e. its zero at ``range_max``.
    """
    joints: dict[str, JointCalibration] = {}
    required = ('id', 'drive_mode', 'homing_offset', 'range_min', 'range_max')
    for name, motor in data.items():
        missing = [k for k in required if k not in motor]
        if missing:
            raise CalibrationError(f'{name}: missing field(s) {missing} (LeRobot calibration)')
        ident = _int(motor['id'], f'{name}.id')
        drive_mode = _int(motor['drive_mode'], f'{name}.drive_mode')
        if drive_mode not in (0, 1):
            raise CalibrationError(f'{name}.drive_mode: expected 0 or 1, got {drive_mode}')
        rmin, rmax = _int(motor['range_min'], f'{name}.range_min'), _int(motor['range_max'], f'{name}.range_max')
        in_servo = protocol == 'dynamixel'  # LeRobot's DynamixelMotorsBus.apply_drive_mode is False
        if not in_servo and protocol != 'feetech' and drive_mode:
            raise CalibrationError(
                f'{name}.drive_mode: 1 means a servo register on Dynamixel and a software reversal on Feetech; '
                'give the rig (or the protocol) to import it'
            )
        software_reverse = bool(drive_mode) and not in_servo
        direction = -1 if software_reverse else 1
        if name == gripper:
            zero = float(rmax if software_reverse else rmin)
        else:
            zero = (rmin + rmax) / 2.0
        try:
            joints[name] = JointCalibration(
                id=ident,
                homing_offset=_int(motor['homing_offset'], f'{name}.homing_offset'),
                range_min=rmin,
                range_max=rmax,
                direction=direction,
                zero_ticks=zero,
                drive_mode=drive_mode if in_servo else 0,
            )
        except ValidationError as exc:
            raise CalibrationError(_format_errors(name, exc)) from None
    return ArmCalibration(
        arm=arm.name if arm else '',
        protocol=protocol if protocol in ('feetech', 'dynamixel', 'sim') else '',
        resolution=resolution,
        ticks_per_turn=resolution - 1,  # LeRobot's max_res in _normalize/_unnormalize (DEGREES)
        source='lerobot',
        created=now_iso(),
        joints=joints,
    )


def _from_lerobot_legacy(
    data: Mapping[str, Any], *, arm: ArmConfig | None, protocol: str, gripper: str, resolution: int
) -> ArmCalibration:
    """LeRobot's older list-based format (``motor_names``, ``homing_offset``, ``drive_mode``, ``calib_mode``).

    There the offset was applied in software (the servo register stays 0):
    DEGREE joints read ``(±ticks + homing_offset)`` half-turn units, so 0 rad is at
    ``-direction * homing_offset``; LINEAR joints (the gripper) go 0-100 % from
    ``start_pos`` to ``end_pos``. The file has no servo ids: they come from the rig.
    """
    names = data.get('motor_names')
    if not isinstance(names, list) or not names:
        raise CalibrationError('motor_names: expected a non-empty list')
    n = len(names)
    for key in ('homing_offset', 'drive_mode'):
        if not isinstance(data.get(key), list) or len(data[key]) != n:
            raise CalibrationError(f'{key}: expected a list of {n} values (one per motor_names entry)')
    modes = data.get('calib_mode', ['DEGREE'] * n)
    if not isinstance(modes, list) or len(modes) != n:
        raise CalibrationError(f'calib_mode: expected a list of {n} values')
    starts, ends = data.get('start_pos'), data.get('end_pos')
    if arm is None:
        raise CalibrationError('the legacy LeRobot format has no servo ids: give the rig and arm to import it')
    ids = {j.name: j.id for j in arm.joints}
    joints: dict[str, JointCalibration] = {}
    for i, name in enumerate(names):
        if name not in ids:
            raise CalibrationError(f'motor_names[{i}]: {name!r} is not a joint of arm {arm.name!r} ({sorted(ids)})')
        drive_mode = _int(data['drive_mode'][i], f'drive_mode[{i}]')
        direction = -1 if drive_mode else 1
        offset = _int(data['homing_offset'][i], f'homing_offset[{i}]')
        mode = str(modes[i]).upper()
        if mode == 'DEGREE':
            # No range in this format: allow one turn centred on the zero; the rig limits narrow it.
            zero = float(-direction * offset)
            rmin, rmax = math.floor(zero - resolution / 2), math.ceil(zero + resolution / 2) - 1
        elif mode == 'LINEAR':
            if not (isinstance(starts, list) and isinstance(ends, list) and len(starts) == n and len(ends) == n):
                raise CalibrationError('start_pos/end_pos: needed (one per motor) for LINEAR joints')
            start, end = _int(starts[i], f'start_pos[{i}]'), _int(ends[i], f'end_pos[{i}]')
            if start == end:
                raise CalibrationError(f'start_pos[{i}] == end_pos[{i}] ({start}): empty gripper range')
            zero, direction = float(start), (1 if end > start else -1)
            rmin, rmax = min(start, end), max(start, end)
        else:
            raise CalibrationError(f'calib_mode[{i}]: expected DEGREE or LINEAR, got {modes[i]!r}')
        joints[name] = JointCalibration(
            id=ids[name], homing_offset=0, range_min=rmin, range_max=rmax, direction=direction, zero_ticks=zero
        )
    return ArmCalibration(
        arm=arm.name,
        protocol=protocol if protocol in ('feetech', 'dynamixel', 'sim') else '',
        resolution=resolution,
        source='lerobot_legacy',
        created=now_iso(),
        joints=joints,
    )
