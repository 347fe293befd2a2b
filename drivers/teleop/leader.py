"""One leader arm on its serial bus, without ROS: connect, read the joint angles, survive unplugging.

A leader is an arm a person moves by hand. Its servos are read, never driven: torque stays off,
except on a Dynamixel (Koch) leader's gripper, which LeRobot's ``koch_leader`` runs in current-based
position mode (Operating_Mode 5) with torque on, holding a goal part-way open: the operator squeezes
the trigger against a current-limited spring and it springs back when let go. An SO-101 leader
(Feetech STS3215) has a plain trigger: all six servos torque off.

Angles come through the leader's calibration (the same format and mapping as a follower's,
``drivers/servo/calibration.py``); its homing offsets (and Dynamixel drive modes) are put back into
the servos on connect when they differ, since the calibrated ticks assume them, as the arm driver
does for a follower. One sync read of Present_Position per cycle. A port that fails is closed and
reopened with backoff on later reads; a read with a servo missing gives None for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bimanual_vla.config import LeaderConfig
from bimanual_vla.drivers.servo.arm_controller import write_eeprom
from bimanual_vla.drivers.servo.bus import BusError, PortError, ServoBus
from bimanual_vla.drivers.servo.calibration import (
    DEFAULT_RESOLUTION,
    ArmCalibration,
    CalibrationError,
    JointCalibration,
    load_calibration,
    now_iso,
)
from bimanual_vla.drivers.servo.control_table import Register
from bimanual_vla.drivers.teleop.mapping import leader_gripper_range

Log = Callable[[str, str], None]  # (level: 'info'|'warn'|'error', message)

# Dynamixel X (protocol 2.0) registers the follower's control table does not need.
CURRENT_BASED_POSITION = 5  # Operating_Mode: position control with the drive current limited by Goal_Current
GOAL_CURRENT = Register(102, 2, signed=True)


def leader_calibration(leader: LeaderConfig) -> tuple[ArmCalibration, list[str]]:
    """The leader's calibration and warnings: its file, or the identity mapping (said loudly) where there is none.

    A file that exists but is invalid, or lacks a joint or has another servo id, raises CalibrationError.
    """
    gripper = leader.gripper.joint if leader.gripper is not None else None
    path = Path(leader.calibration).expanduser() if leader.calibration else None
    if path is not None and path.exists():
        calib = load_calibration(path, protocol=leader.protocol, gripper=gripper)
        missing = [j.name for j in leader.joints if j.name not in calib.joints]
        wrong = [f'{j.name}: rig id {j.id}, file id {calib.joints[j.name].id}' for j in leader.joints
                 if j.name not in missing and calib.joints[j.name].id != j.id]  # fmt: skip
        if missing or wrong:
            raise CalibrationError(
                f'{path}: does not fit leader {leader.name}: '
                + (f'no entry for joint(s) {missing}' if missing else '; '.join(wrong))
            )
        return calib, []
    mid = DEFAULT_RESOLUTION // 2
    joints = {
        j.name: JointCalibration(
            id=j.id, homing_offset=0, range_min=0, range_max=DEFAULT_RESOLUTION - 1, zero_ticks=mid
        )
        for j in leader.joints
    }
    calib = ArmCalibration(
        arm=leader.name, protocol=leader.protocol, source='identity', created=now_iso(), joints=joints
    )
    where = f'calibration file {path} NOT FOUND' if path is not None else 'NO CALIBRATION configured'
    return calib, [
        f'leader {leader.name}: {where}; using the identity mapping (servo mid-point = 0 rad): the follower copies '
        'the leader only if both were assembled alike. Calibrate the leader (docs/teleop.md).'
    ]


@dataclass
class LeaderReading:
    """One sync read: ``t`` (monotonic s, when the replies were in) and angles (rad) in the leader's joint order."""

    t: float
    positions: list[float | None]

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.positions)


@dataclass
class LeaderStats:
    reads: int = 0
    complete_reads: int = 0
    connects: int = 0
    failed_connects: int = 0
    disconnects: int = 0
    homing_offsets_restored: int = 0
    last_error: str = ''
    missing: list[int] = field(default_factory=list)


class LeaderReader:
    """Reads one leader arm; not thread-safe (one reader thread owns it)."""

    def __init__(
        self,
        leader: LeaderConfig,
        calibration: ArmCalibration,
        *,
        bus_factory: Callable[..., ServoBus] = ServoBus,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        log: Log | None = None,
    ) -> None:
        self.leader = leader
        self.calibration = calibration
        self.names = leader.joint_names
        self.ids = [j.id for j in leader.joints]
        self._bus_factory = bus_factory
        self._log = log or (lambda level, msg: None)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._backoff_s = backoff_initial_s
        self._next_connect = 0.0
        self.bus: ServoBus | None = None
        self.stats = LeaderStats()
        self.spring_ticks: int | None = None  # Koch trigger: where its spring holds it

    @property
    def connected(self) -> bool:
        return self.bus is not None

    # ------------------------------------------------------------ connection

    def _error(self, message: str, level: str = 'error') -> None:
        if message != self.stats.last_error:  # a long outage logs once, not at every retry
            self._log(level, message)
        self.stats.last_error = message

    def connect(self, now: float | None = None) -> bool:
        """Open the bus and take the leader over (torque off, calibration registers, the Koch spring)."""
        now = time.monotonic() if now is None else now
        bus = self._bus_factory(self.leader.port, self.leader.protocol, self.leader.baudrate)
        try:
            bus.open()
            missing = []
            for sid in self.ids:
                try:
                    bus.ping(sid)
                except PortError:
                    raise
                except BusError:
                    missing.append(sid)
            if missing:
                raise BusError(f'servo(s) {missing} do not answer')
            ct = bus.control_table
            for sid in self.ids:  # a leader is moved by hand: no servo holds it
                bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
            if not self.calibration.is_identity:
                self._restore_calibration_registers(bus)
            if self.leader.protocol == 'dynamixel' and self.leader.gripper is not None:
                self._hold_trigger_with_spring(bus)
        except Exception as exc:  # any failure taking the leader over: report, back off, retry later
            bus.close()
            self.stats.failed_connects += 1
            self._error(f'leader {self.leader.name}: cannot connect to {self.leader.port}: {exc}')
            self._next_connect = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)
            return False
        self.bus = bus
        self.stats.connects += 1
        self._backoff_s = self.backoff_initial_s
        self._log('info', f'leader {self.leader.name}: connected on {self.leader.port} ({len(self.ids)} servos)')
        return True

    def _restore_calibration_registers(self, bus: ServoBus) -> None:
        """Homing offsets (and Dynamixel drive modes) as the calibration assumes them; torque is already off."""
        ct = bus.control_table
        for name, sid in zip(self.names, self.ids, strict=True):
            want = self.calibration.joints[name]
            have = ct.decode(ct.homing_offset, bus.read(sid, ct.homing_offset.address, ct.homing_offset.length))
            if have != want.homing_offset:
                self._log(
                    'warn',
                    f'leader {self.leader.name}: servo {sid} ({name}) homing offset is {have}, calibration says '
                    f'{want.homing_offset}; writing the calibrated value',
                )
                write_eeprom(bus, sid, 'homing_offset', want.homing_offset)
                self.stats.homing_offsets_restored += 1
            if ct.drive_mode is not None:
                mode = ct.decode(ct.drive_mode, bus.read(sid, ct.drive_mode.address, ct.drive_mode.length))
                if mode & 1 != want.drive_mode:
                    write_eeprom(bus, sid, 'drive_mode', (mode & ~1) | want.drive_mode)

    def gripper_range(self) -> tuple[float, float]:
        """The leader gripper's (closed, open) angles: the rig file's, else its calibrated range, low end closed."""
        return leader_gripper_range(self.leader, self.calibration)

    def _hold_trigger_with_spring(self, bus: ServoBus) -> None:
        """Koch leader: the gripper in current-based position mode, torque on, held part-way open (LeRobot's
        koch_leader): a trigger the operator squeezes against a current-limited spring."""
        grip = self.leader.gripper
        assert grip is not None
        ct = bus.control_table
        sid = self.ids[self.names.index(grip.joint)]
        assert ct.operating_mode is not None
        write_eeprom(bus, sid, 'operating_mode', CURRENT_BASED_POSITION)
        if grip.spring_goal_current is not None:
            bus.write(sid, GOAL_CURRENT.address, ct.encode(GOAL_CURRENT, grip.spring_goal_current))
        closed, opened = self.gripper_range()
        self.spring_ticks = self.calibration.to_ticks(
            grip.joint, closed + grip.spring_open_fraction * (opened - closed)
        )
        bus.write(sid, ct.goal_position.address, ct.encode(ct.goal_position, self.spring_ticks))
        bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 1))

    def _drop(self, reason: str, now: float) -> None:
        if self.bus is not None:
            self.bus.close()
        self.bus = None
        self.stats.disconnects += 1
        self._error(f'leader {self.leader.name}: lost {self.leader.port}: {reason}; reconnecting')
        self._next_connect = now + self._backoff_s

    # ---------------------------------------------------------------- reading

    def read(self, now: float | None = None) -> LeaderReading | None:
        """One sync read of every joint; None while the port is not open (it is reopened with backoff)."""
        now = time.monotonic() if now is None else now
        if self.bus is None and (now < self._next_connect or not self.connect(now)):
            return None
        assert self.bus is not None
        reg = self.bus.control_table.present_position
        try:
            replies = self.bus.sync_read(self.ids, reg.address, reg.length)
        except PortError as exc:
            self._drop(str(exc), now)
            return None
        except BusError as exc:
            self._error(f'leader {self.leader.name}: sync read failed: {exc}', 'warn')
            replies = {}
        except Exception as exc:  # e.g. termios.error from a vanished tty: a lost port, never a dead thread
            self._drop(f'{type(exc).__name__}: {exc}', now)
            return None
        t = time.monotonic()
        ct = self.bus.control_table
        positions: list[float | None] = []
        for name, sid in zip(self.names, self.ids, strict=True):
            data = replies.get(sid)
            positions.append(None if data is None else self.calibration.to_radians(name, ct.decode(reg, data)))
        self.stats.reads += 1
        self.stats.missing = [sid for sid, p in zip(self.ids, positions, strict=True) if p is None]
        if not self.stats.missing:
            self.stats.complete_reads += 1
        return LeaderReading(t, positions)

    def close(self) -> None:
        """Let go of the Koch trigger's spring (torque off) and release the port."""
        if self.bus is None:
            return
        if self.spring_ticks is not None and self.leader.gripper is not None:
            ct = self.bus.control_table
            sid = self.ids[self.names.index(self.leader.gripper.joint)]
            try:
                self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
            except Exception as exc:  # a vanished port: nothing more to do, say so
                self._error(f'leader {self.leader.name}: could not release the trigger spring: {exc}', 'warn')
        self.bus.close()
        self.bus = None

    def counters(self) -> dict[str, int]:
        return self.bus.counters.as_dict() if self.bus is not None else {}
