"""Rig and policy configuration: pydantic models, YAML loading, and clear errors.

A rig is described entirely by one YAML file (arms, servos, joints, limits,
cameras, control rate, URDF); nothing about a rig is hard-coded in the nodes.
Every model forbids unknown fields so a typo ("baud_rate") fails loudly at start
instead of silently falling back to a default on a real robot. Any failure is
raised as ``ConfigError`` with one message naming the file and the field path
(e.g. ``so101.yaml: arms[0].joints[2].lower: ...``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bimanual_vla.servo_baud_rates import BAUD_RATES, baud_register_value

NAME_PATTERN = r'^[A-Za-z][A-Za-z0-9_]*$'

# A rig or policy file is a page of YAML; anything larger is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Bound:
    """The range a safety setting must lie in: (low, high], or [low, high] with ``low_inclusive``.

    The config models and the nodes' parameter overrides check the same constants (below), so a
    node parameter can never set a value the rig or policy file could not. NaN is outside every bound.
    """

    low: float
    high: float
    unit: str = ''
    low_inclusive: bool = False

    def __str__(self) -> str:
        def num(x: float) -> str:
            return '2*pi' if x == 2 * math.pi else f'{x:g}'

        text = f'{"[" if self.low_inclusive else "("}{num(self.low)}, {num(self.high)}]'
        return f'{text} {self.unit}' if self.unit else text

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high

    def check(self, value: float) -> float:
        """``value`` if it is within the bound, else ValueError('must be in (0, 2] s, got 1e+12')."""
        if not self.contains(value):
            raise ValueError(f'must be in {self}, got {value:g}')
        return value


# Hard bounds of every setting that guards motion (documented in docs/architecture.md, Configuration).
# The arm driver's read/write loop is where the watchdog and the ramp act: at 10 Hz a watchdog trip or a
# goal write is at most 0.1 s late; 1000 Hz is the most a 1 Mbaud bus sustains for a sync read plus a
# sync write of an arm's servos (about 0.5 ms each for six).
READ_RATE_HZ = Bound(10.0, 1000.0, 'Hz', low_inclusive=True)
# The rate commands are streamed at (policy ticks, sim physics): 10 Hz keeps a command period (0.1 s) well
# inside the shipped 0.5 s watchdog; the policy's timer and the drivers cannot follow more than 1000 Hz.
CONTROL_RATE_HZ = Bound(10.0, 1000.0, 'Hz', low_inclusive=True)
# Watchdog: an arm whose commander died keeps its last target this long; 2 s at 2*pi rad/s is already a
# full turn, longer only means moving blind.
COMMAND_TIMEOUT_S = Bound(0.0, 2.0, 's')
# Ramp: the largest goal change in one driver write. 0.2 rad is what an STS3215 covers in ~45 ms at its
# no-load speed (~4.7 rad/s at 7.4 V): a larger step lets the servo's own position loop jerk the joint at
# full torque, the jump the ramp exists to prevent. Shipped: 0.05 rad at 100 Hz, 0.1 rad at the sim's 50 Hz.
MAX_STEP_RAD = Bound(0.0, 0.2, 'rad')
# Joint speed caps (the arm driver's ramp in time, the policy's gate): one turn per second. The STS3215
# reaches ~4.7 rad/s, the XL330-M288 ~10.8 rad/s free-running; a bimanual policy never needs more.
MAX_VELOCITY_RAD_S = Bound(0.0, 2 * math.pi, 'rad/s')
# Stall protection: a fraction of the servo's full-scale load/current, and how long it may push; 2 s of
# a servo pushing at full load is already enough to heat it.
STALL_LOAD_FRACTION = Bound(0.0, 1.0)
STALL_TIME_S = Bound(0.0, 2.0, 's')
# The policy holds when an input is older than this: past 2 s (the longest watchdog) the scene it would
# react to is not the one the arms are in.
STALENESS_S = Bound(0.0, 2.0, 's')
# Joint limits: a single-turn position servo (4096 ticks a turn) spans at most one turn, so each limit lies
# within +-2*pi of the calibrated zero and upper - lower is at most 2*pi; wider limits clamp nothing.
JOINT_LIMIT_RAD = 2 * math.pi


def _within(bound: Bound) -> AfterValidator:
    return AfterValidator(bound.check)


def check_override(where: str, name: str, value: Any, bound: Bound) -> float:
    """A node parameter that overrides a config value, held to that value's bound.

    Returns it as a float; raises ConfigError in the config's one-line form (``<where>: <name>: <message>``).
    """
    try:
        return bound.check(float(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'{where}: {name}: {exc}') from None


class ConfigError(ValueError):
    """A configuration file is missing, unparsable or invalid; the message names file and field."""


class _Strict(BaseModel):
    """Unknown fields refused, values frozen, and no type conversion: YAML already types every value.

    Strict: a quoted number, a bool for a number (`baudrate: true` would be 1 baud) or a number for a
    bool is refused rather than guessed at; a whole number is still a float field's value.
    """

    model_config = ConfigDict(extra='forbid', frozen=True, strict=True)


# --------------------------------------------------------------------------- rig


class JointConfig(_Strict):
    """One servo-driven joint: bus id, name, and position limits in radians."""

    id: int = Field(ge=0, le=252, description='servo id on the bus (0..252)')
    name: str = Field(pattern=NAME_PATTERN)
    lower: float
    upper: float

    @model_validator(mode='after')
    def _limits_ordered(self) -> JointConfig:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError('lower and upper must be finite numbers')
        if self.lower >= self.upper:
            raise ValueError(f'lower ({self.lower}) must be < upper ({self.upper})')
        if max(abs(self.lower), abs(self.upper)) > JOINT_LIMIT_RAD or self.upper - self.lower > JOINT_LIMIT_RAD:
            raise ValueError(
                f'lower ({self.lower}) and upper ({self.upper}) must lie within [-2*pi, 2*pi] and span at most '
                'one turn (2*pi): a single-turn servo can reach no more'
            )
        return self


class ArmConfig(_Strict):
    """One arm: the serial bus it lives on and its joints in kinematic order."""

    name: str = Field(pattern=NAME_PATTERN)
    protocol: Literal['feetech', 'dynamixel', 'sim']
    port: str = ''
    baudrate: int = Field(default=1_000_000, gt=0, description="one of the servo family's rates (servo_baud_rates)")
    calibration: str | None = None
    joints: list[JointConfig] = Field(min_length=1)
    gripper: str | None = Field(default=None, description='name of the joint that is the gripper')
    read_rate_hz: Annotated[float, _within(READ_RATE_HZ)] = 100.0
    command_timeout_s: Annotated[float, _within(COMMAND_TIMEOUT_S)] = Field(
        default=0.5, description='watchdog: hold after this long without commands'
    )
    max_step_rad: Annotated[float, _within(MAX_STEP_RAD)] = Field(
        default=0.05, description='largest goal change per driver tick'
    )
    # 5 rad/s is the shipped ramp at its nominal rate (0.05 rad x 100 Hz; the sim's 0.1 rad x 50 Hz), so it
    # binds only when goal writes come closer together than a tick (after an I/O overrun).
    max_velocity_rad_s: Annotated[float, _within(MAX_VELOCITY_RAD_S)] = Field(
        default=5.0, description='largest goal speed: a goal change is at most this times the time since the last'
    )
    allow_missing_servos: bool = False
    stall_load_fraction: Annotated[float, _within(STALL_LOAD_FRACTION)] = Field(
        default=0.7,
        description="fraction of the servo's full-scale present load/current above which a joint counts as pushing",
    )
    stall_time_s: Annotated[float, _within(STALL_TIME_S)] = Field(
        default=0.3, description='how long a joint must push before the driver stops pushing'
    )

    @field_validator('baudrate')
    @classmethod
    def _servo_baud_rate(cls, baudrate: int, info: ValidationInfo) -> int:
        protocol = info.data.get('protocol')
        if protocol in BAUD_RATES:  # a simulated arm opens no port
            baud_register_value(protocol, baudrate)  # ValueError naming the rates the servos can be set to
        return baudrate

    @field_validator('joints')
    @classmethod
    def _unique_joints(cls, joints: list[JointConfig]) -> list[JointConfig]:
        _reject_duplicates([j.name for j in joints], 'joint name')
        _reject_duplicates([j.id for j in joints], 'servo id')
        return joints

    @model_validator(mode='after')
    def _port_and_gripper(self) -> ArmConfig:
        if self.protocol != 'sim' and not self.port:
            raise ValueError(f'arm {self.name!r}: protocol {self.protocol!r} needs a port')
        if self.gripper is not None and self.gripper not in self.joint_names:
            raise ValueError(f'gripper {self.gripper!r} is not one of the joints {self.joint_names}')
        return self

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    def qualified_joint_names(self) -> list[str]:
        """Names as published on joint_states: ``<arm>_<joint>``."""
        return [f'{self.name}_{j.name}' for j in self.joints]


class CameraConfig(_Strict):
    """One camera: an OpenCV source (device path or index, video file, or test_pattern)."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str | int
    width: int = Field(default=640, gt=0, le=7680)
    height: int = Field(default=480, gt=0, le=4320)
    fps: float = Field(default=30.0, gt=0, le=240)


class SimConfig(_Strict):
    """A simulated rig's `sim:` block: what `sim_rig` starts with unless a node parameter overrides it.

    Strict types (a quoted number or a float seed is refused, not converted): the block is read by a
    node that takes each value as it is, so a wrong type would otherwise only fail, or be cast, there.
    """

    task: Literal['transfer_cube', 'insertion', 'handover_cube', 'lift_bar'] = (
        'transfer_cube'  # the last two: SO-101 twin
    )
    seed: int = Field(default=0, ge=0, description='episode seed at start and for sim/reset')
    real_time_factor: float = Field(default=1.0, ge=0, allow_inf_nan=False, description='0: as fast as possible')
    servo_bus: Literal['', 'feetech', 'dynamixel'] = Field(
        default='', description="'': the sim follows joint_command; else every arm is an emulated servo bus"
    )


# Teleoperation: how far apart (rad, per joint) a leader and its follower may be for teleop to start without a
# ramp. 0.5 rad is already a visible lurch at the driver's ramp; a wider tolerance means no check at all.
START_TOLERANCE_RAD = Bound(0.0, 0.5, 'rad')
# A leader silent this long makes its follower hold; past 2 s (the longest watchdog) the driver holds anyway.
LEADER_TIMEOUT_S = Bound(0.0, 2.0, 's')


class LeaderJointConfig(_Strict):
    """One servo of a leader arm: bus id and joint name (leaders have no joint limits: nothing drives them)."""

    id: int = Field(ge=0, le=252, description='servo id on the bus (0..252)')
    name: str = Field(pattern=NAME_PATTERN)


class LeaderGripperConfig(_Strict):
    """A leader's gripper (trigger): its joint, and its range mapped linearly onto the follower's gripper range.

    Angles in radians, in each arm's own calibrated angles. Unset ends default to the leader calibration's
    range (closed = low end) and the follower gripper joint's limits (closed = lower).
    """

    joint: str = Field(default='gripper', pattern=NAME_PATTERN, description="the leader's gripper joint")
    leader_closed: float | None = Field(default=None, allow_inf_nan=False)
    leader_open: float | None = Field(default=None, allow_inf_nan=False)
    follower_closed: float | None = Field(default=None, allow_inf_nan=False)
    follower_open: float | None = Field(default=None, allow_inf_nan=False)
    spring_open_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description='Dynamixel (Koch) leaders: the trigger is held by a current-limited position at this fraction '
        "of the leader gripper's range from closed (LeRobot's koch_leader gripper_open_pos 50 %)",
    )
    spring_goal_current: int | None = Field(
        default=None,
        gt=0,
        le=1750,
        description="Dynamixel leaders: Goal_Current of the spring (the servo's units); None keeps the servo's "
        'own (its Current_Limit), as LeRobot does',
    )

    @model_validator(mode='after')
    def _distinct_ends(self) -> LeaderGripperConfig:
        for a, b, what in (
            (self.leader_closed, self.leader_open, 'leader'),
            (self.follower_closed, self.follower_open, 'follower'),
        ):
            if a is not None and b is not None and a == b:
                raise ValueError(f'{what}_closed and {what}_open are both {a}: an empty gripper range')
        return self


class LeaderConfig(_Strict):
    """A leader arm a person moves by hand; `teleop` reads it and commands its follower arm to match."""

    name: str = Field(pattern=NAME_PATTERN)
    protocol: Literal['feetech', 'dynamixel'] = Field(
        description='feetech: SO-101 leader (STS3215, torque off); dynamixel: Koch leader (XL330, the gripper '
        'held by a current-limited spring position)'
    )
    port: str = Field(min_length=1)
    baudrate: int = Field(default=1_000_000, gt=0, description="one of the servo family's rates (servo_baud_rates)")
    calibration: str | None = None
    follower: str = Field(pattern=NAME_PATTERN, description='the arm of this rig the leader drives')
    joints: list[LeaderJointConfig] = Field(min_length=1)
    joint_map: dict[str, str] = Field(
        default_factory=dict,
        description='leader joint -> follower joint; a leader joint not named here drives the follower joint of '
        'the same name (the gripper goes through `gripper`)',
    )
    gripper: LeaderGripperConfig | None = None
    read_rate_hz: Annotated[float, _within(READ_RATE_HZ)] = 100.0
    start_tolerance_rad: Annotated[float, _within(START_TOLERANCE_RAD)] = Field(
        default=0.2, description='teleop starts only with every mapped joint of leader and follower this close'
    )
    timeout_s: Annotated[float, _within(LEADER_TIMEOUT_S)] = Field(
        default=0.1, description='a leader silent this long makes its follower hold'
    )

    @field_validator('baudrate')
    @classmethod
    def _servo_baud_rate(cls, baudrate: int, info: ValidationInfo) -> int:
        protocol = info.data.get('protocol')
        if protocol in BAUD_RATES:
            baud_register_value(protocol, baudrate)
        return baudrate

    @field_validator('joints')
    @classmethod
    def _unique_joints(cls, joints: list[LeaderJointConfig]) -> list[LeaderJointConfig]:
        _reject_duplicates([j.name for j in joints], 'joint name')
        _reject_duplicates([j.id for j in joints], 'servo id')
        return joints

    @model_validator(mode='after')
    def _mapping_names_leader_joints(self) -> LeaderConfig:
        names = self.joint_names
        unknown = [j for j in self.joint_map if j not in names]
        if unknown:
            raise ValueError(f'joint_map names leader joint(s) {unknown} the leader does not have {names}')
        if self.gripper is not None:
            if self.gripper.joint not in names:
                raise ValueError(f'gripper.joint {self.gripper.joint!r} is not one of the joints {names}')
            if self.gripper.joint in self.joint_map:
                raise ValueError(f'{self.gripper.joint!r} is the gripper: map it with `gripper`, not joint_map')
        return self

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    def follower_joint(self, leader_joint: str) -> str:
        """The follower joint a (non-gripper) leader joint drives."""
        return self.joint_map.get(leader_joint, leader_joint)

    def body_joints(self) -> list[str]:
        """The leader joints mapped one to one (every joint but the gripper)."""
        gripper = self.gripper.joint if self.gripper is not None else None
        return [n for n in self.joint_names if n != gripper]


class RigConfig(_Strict):
    """A whole rig: arms, cameras, control rate, URDF and e-stop behaviour."""

    name: str = Field(pattern=NAME_PATTERN)
    control_rate_hz: Annotated[float, _within(CONTROL_RATE_HZ)] = 50.0
    urdf: str
    estop_action: Literal['hold', 'torque_off'] = 'hold'
    arms: list[ArmConfig] = Field(min_length=1)
    cameras: list[CameraConfig] = Field(default_factory=list)
    sim: SimConfig | None = Field(default=None, description='simulator settings, only for simulated rigs')
    leaders: list[LeaderConfig] = Field(default_factory=list, description='leader arms for teleoperation')
    policy_host: str = Field(
        default='',
        pattern=r'^[A-Za-z0-9._:-]*$',
        description="the computer the policy node runs on, if not the robot's ('': the same one); "
        'docs/remote_policy.md',
    )

    @field_validator('arms')
    @classmethod
    def _unique_arms(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        _reject_duplicates([a.name for a in arms], 'arm name')
        # joint_states names are <arm>_<joint>: 'left' + 'shoulder_x' and 'left_shoulder' + 'x' would be one joint
        owners: dict[str, list[str]] = {}
        for arm in arms:
            for joint, qualified in zip(arm.joint_names, arm.qualified_joint_names(), strict=True):
                owners.setdefault(qualified, []).append(f'{arm.name}/{joint}')
        clashes = [f'{q} ({" and ".join(o)})' for q, o in owners.items() if len(o) > 1]
        if clashes:
            raise ValueError(f'arm and joint names make the same <arm>_<joint> name: {", ".join(clashes)}')
        by_port: dict[str, list[int]] = {}
        for arm in arms:
            if arm.protocol == 'sim':
                continue
            ids = by_port.setdefault(arm.port, [])
            ids.extend(j.id for j in arm.joints)
        for port, ids in by_port.items():
            _reject_duplicates(ids, f'servo id on shared port {port}')
        return arms

    @field_validator('leaders')
    @classmethod
    def _leaders_drive_arms(cls, leaders: list[LeaderConfig], info: ValidationInfo) -> list[LeaderConfig]:
        _reject_duplicates([lead.name for lead in leaders], 'leader name')
        _reject_duplicates([lead.follower for lead in leaders], 'follower (one leader per arm)')
        arms = {a.name: a for a in info.data.get('arms') or []}  # absent when the arms failed validation
        if not arms:
            return leaders
        ports = {a.port: f'arm {a.name}' for a in arms.values() if a.protocol != 'sim'}
        for lead in leaders:
            arm = arms.get(lead.follower)
            if arm is None:
                raise ValueError(
                    f'leader {lead.name}: follower {lead.follower!r} is not an arm of this rig {list(arms)}'
                )
            if lead.port in ports:
                raise ValueError(f'leader {lead.name}: port {lead.port} is also the port of {ports[lead.port]}')
            ports[lead.port] = f'leader {lead.name}'
            driven = [lead.follower_joint(j) for j in lead.body_joints()]
            missing = [j for j in driven if j not in arm.joint_names]
            if missing:
                raise ValueError(
                    f'leader {lead.name}: follower joint(s) {missing} are not joints of arm {arm.name} '
                    f'{arm.joint_names}'
                )
            if lead.gripper is not None:
                if arm.gripper is None:
                    raise ValueError(f'leader {lead.name}: has a gripper but arm {arm.name} names no gripper joint')
                driven.append(arm.gripper)
            _reject_duplicates(driven, f'follower joint driven by leader {lead.name}')
        return leaders

    def leader(self, name: str) -> LeaderConfig:
        for lead in self.leaders:
            if lead.name == name:
                return lead
        raise ConfigError(f'rig {self.name!r} has no leader {name!r}; leaders: {[x.name for x in self.leaders]}')

    @field_validator('cameras')
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        _reject_duplicates([c.name for c in cameras], 'camera name')
        return cameras

    def arm(self, name: str) -> ArmConfig:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ConfigError(f'rig {self.name!r} has no arm {name!r}; arms: {[a.name for a in self.arms]}')

    def camera(self, name: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise ConfigError(f'rig {self.name!r} has no camera {name!r}; cameras: {[c.name for c in self.cameras]}')

    def all_joint_names(self) -> list[str]:
        """Every qualified joint name of the rig, arms in config order."""
        return [n for arm in self.arms for n in arm.qualified_joint_names()]


# ------------------------------------------------------------------------ policy


class ReasoningConfig(_Strict):
    enabled: bool = True
    every_n_chunks: int = Field(default=1, ge=1, description='decode a new subtask every N chunks')
    max_tokens: int = Field(default=16, ge=1, le=256)


class InferenceConfig(_Strict):
    num_steps: int = Field(default=10, ge=1, le=100, description='flow-matching Euler steps')
    execution_horizon: int = Field(default=25, ge=1, description='actions executed before the next chunk is due')
    chunking: Literal['rtc', 'naive', 'ensemble'] = 'rtc'
    chunk_start: Literal['snapshot', 'arrival_compensated', 'synchronized', 'oldest_input'] = Field(
        default='snapshot',
        description=(
            "time of a chunk's first action: 'snapshot' (when the inputs were gathered; matches "
            '`train`, whose samples pair the latest inputs at or before t with the commands from t), '
            "'arrival_compensated' (the snapshot, earlier by the cameras' mean median frame arrival delay: "
            'the frames in hand are that much older than the ones training paired with the snapshot), '
            "'synchronized' (now minus how late the cameras' frames arrive, with every input's latest "
            'stamped at or before then: the same pairing when frames arrive late; policy_node/input_sync.py) or '
            "'oldest_input' (the oldest input's stamp; for data sets that stamp a sample at its capture)"
        ),
    )
    action_time_offset_s: float | None = Field(
        default=None,
        ge=0,
        le=1.0,
        description=(
            'with chunk_start snapshot (or arrival_compensated, synchronized), start each chunk this much earlier: '
            "the training data's commands were "
            "stamped this long after they took effect (default: the checkpoint's own metadata)"
        ),
    )
    rtc_beta: float = Field(default=5.0, gt=0, description='cap on the RTC guidance weight')
    rtc_jacobian: Literal['exact', 'identity'] = Field(
        default='exact',
        description=(
            "RTC guidance through the action expert's Jacobian ('exact': a backward pass per flow step) or "
            "with that Jacobian taken as the identity ('identity': forward passes only, an unguided chunk's cost)"
        ),
    )
    rtc_latency_quantile: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description=(
            'the latency RTC freezes steps for: this quantile of the last 10 inferences (1: their max), '
            'times 1 + rtc_latency_margin. In ROS time, so the sim clock at any real-time factor'
        ),
    )
    rtc_latency_margin: float = Field(default=0.2, ge=0, le=2, description='safety margin on that latency')
    ensemble_decay: float = Field(default=0.1, ge=0, description='temporal-ensembling exponential weight')
    device: str = 'cpu'
    torch_threads: int = Field(
        default=0, ge=0, description='torch intra-op threads for inference (0: torch default); leave a core free'
    )


class StalenessConfig(_Strict):
    camera_max_age_s: Annotated[float, _within(STALENESS_S)] = 0.5
    joint_max_age_s: Annotated[float, _within(STALENESS_S)] = 0.2


class SafetyConfig(_Strict):
    max_velocity_rad_s: Annotated[float, _within(MAX_VELOCITY_RAD_S)] = Field(
        default=2.0, description='per-joint speed cap on streamed commands'
    )
    enabled_at_start: bool = False


class PolicyConfig(_Strict):
    """How the policy node runs a checkpoint on a rig."""

    checkpoint: str
    task: str = ''
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)


# ------------------------------------------------------------------------ loading

_M = TypeVar('_M', bound=BaseModel)


def _reject_duplicates(values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    dups = sorted({str(v) for v in values if v in seen or seen.add(v)})
    if dups:
        raise ValueError(f'duplicate {what}: {", ".join(dups)}')


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ''
    for part in loc:
        if isinstance(part, int):
            out += f'[{part}]'
        else:
            out += ('.' if out else '') + str(part)
    return out or '<top level>'


def format_validation_error(path: str | os.PathLike[str], err: ValidationError) -> str:
    """One line per problem: ``file: field.path: message``."""
    lines = []
    for e in err.errors():
        loc = _format_loc(tuple(p for p in e['loc'] if not str(p).startswith('function-after')))
        msg = e['msg'].removeprefix('Value error, ')
        if e['type'] == 'extra_forbidden':
            msg = 'unknown field (check the spelling)'
        lines.append(f'{path}: {loc}: {msg}')
    return '\n'.join(lines)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f'{path}: file not found')
    with path.open('rb') as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)  # never more than the limit into memory, whatever the file's size
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f'{path}: <top level>: file is larger than {MAX_CONFIG_BYTES // 1024} KiB, not a config')
    try:
        data = yaml.safe_load(raw.decode('utf-8'))
    except UnicodeDecodeError as exc:
        raise ConfigError(f'{path}: <top level>: not UTF-8 text: {exc}') from None
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from exc
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: <top level>: expected a mapping of fields, got {type(data).__name__}')
    return data


def _validate(model: type[_M], data: dict[str, Any], path: str | os.PathLike[str]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def share_dir() -> Path:
    """Where config/, urdf/ and launch/ live: the installed share dir or the source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory('bimanual_vla'))
    except Exception:  # not installed through colcon, or ament_index not importable
        pass
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / 'config' / 'rigs').is_dir():
        return checkout
    import sys

    return Path(sys.prefix) / 'share' / 'bimanual_vla'


def resolve_rig_path(rig: str | os.PathLike[str]) -> Path:
    """A rig file path, or the name of a shipped rig (``so101_bimanual``)."""
    path = Path(os.path.expanduser(str(rig)))
    if path.suffix in ('.yaml', '.yml') or path.exists() or os.sep in str(rig):
        return path
    return share_dir() / 'config' / 'rigs' / f'{rig}.yaml'


def resolve_policy_path(policy: str | os.PathLike[str]) -> Path:
    """A policy file path, or the name of a shipped policy config (``default``)."""
    path = Path(os.path.expanduser(str(policy)))
    if path.suffix in ('.yaml', '.yml') or path.exists() or os.sep in str(policy):
        return path
    return share_dir() / 'config' / 'policy' / f'{policy}.yaml'


def resolve_share_relative(path: str) -> Path:
    """Paths in configs (urdf, checkpoint) are absolute, ~-relative, or relative to the share dir."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else share_dir() / p


def load_rig(rig: str | os.PathLike[str]) -> RigConfig:
    """Load and validate a rig file (or shipped rig name); raise ConfigError on any problem."""
    path = resolve_rig_path(rig)
    return _validate(RigConfig, _load_yaml(path), path)


def load_policy(policy: str | os.PathLike[str]) -> PolicyConfig:
    """Load and validate a policy file (or shipped policy name); raise ConfigError on any problem."""
    path = resolve_policy_path(policy)
    return _validate(PolicyConfig, _load_yaml(path), path)


def rig_summary(rig: RigConfig) -> str:
    """Human-readable overview printed by ``bimanual-vla check-rig``."""
    lines = [
        f'rig {rig.name}: {len(rig.arms)} arm(s), {len(rig.cameras)} camera(s), '
        f'control {rig.control_rate_hz:g} Hz, e-stop {rig.estop_action}',
        f'  urdf: {rig.urdf}',
    ]
    for arm in rig.arms:
        where = '' if arm.protocol == 'sim' else f' on {arm.port} @ {arm.baudrate} baud'
        lines.append(f'  arm {arm.name}: {arm.protocol}{where}, {len(arm.joints)} joints')
        for j in arm.joints:
            lines.append(f'    id {j.id:3d}  {arm.name}_{j.name:<16s} [{j.lower:+.3f}, {j.upper:+.3f}] rad')
    for cam in rig.cameras:
        lines.append(f'  camera {cam.name}: {cam.source} {cam.width}x{cam.height} @ {cam.fps:g} fps')
    return '\n'.join(lines)


def check_rig_files(rig: RigConfig, path: str | os.PathLike[str]) -> None:
    """ConfigError if a file the rig names and every bringup needs is missing: its URDF.

    Not part of `load_rig`: tools that only read a rig's arms and joints (calibrate, eval, train)
    need no URDF. `check-rig` and `run` call it, so a rig they accept is one `run` can start.
    """
    urdf = resolve_share_relative(rig.urdf)
    if not urdf.is_file():
        raise ConfigError(f'{path}: urdf: file {rig.urdf} not found ({urdf})')
