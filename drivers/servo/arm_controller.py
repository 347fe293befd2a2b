"""One arm's I/O loop body, without ROS: bus lifecycle, reading, goal writing, torque, e-stop.

The ``arm_driver`` node is a thin ROS shell around this class: its read thread
calls :meth:`ArmController.cycle` at the read rate, its subscriptions and services
call :meth:`submit_command`, :meth:`submit_trajectory`, :meth:`set_estop` and
:meth:`set_torque`. One lock serialises all of them, so a torque change or e-stop
never interleaves with a half-finished read/write cycle.

Two kinds of command, one filter: a joint command is a target the filter ramps to; a
trajectory (:mod:`bimanual_vla.drivers.servo.trajectory`) is played at each cycle, its value
for that cycle's time handed to the same filter as a command (limits, ramp, stall guard,
watchdog, e-stop). The newest source wins: a joint command drops the trajectory in play, a
trajectory takes over from its splice time. E-stop, torque off and a reconnect drop it too.

What it survives, and how:

* **Port gone** (USB unplugged, emulator stopped): any ``PortError`` closes the bus;
  the next cycles reopen it with exponential backoff. After a reconnect the goals
  restart from the measured positions, so the arm never jumps to a stale target.
* **Servos not answering**: a servo that misses ``missing_after`` reads in a row is
  reported missing. With ``allow_missing_servos`` the others keep working; without
  it no goal is written until every servo is back. A servo that returns resumes
  from its measured position. If *no* servo answers for a while the link is treated
  as lost and reopened.
* **No calibration**: works with the identity mapping but says so in every
  diagnostics message (the node logs it loudly at start).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bimanual_vla.config import ArmConfig
from bimanual_vla.drivers.servo.bus import BusError, PortError, ServoBus
from bimanual_vla.drivers.servo.calibration import ArmCalibration
from bimanual_vla.drivers.servo.command_filter import CommandFilter, CommandRejected, JointLimit
from bimanual_vla.drivers.servo.stall_guard import RELEASE_RAD, StallEvent, StallGuard
from bimanual_vla.drivers.servo.trajectory import Trajectory, TrajectoryPlayer, TrajectoryRejected

Log = Callable[[str, str], None]  # (level: 'info'|'warn'|'error', message)


@dataclass
class Reading:
    """One cycle's measurement: positions (rad) in joint order, None where a servo did not answer.

    ``efforts``: each servo's present load (Feetech) or current (Dynamixel) as a signed fraction of
    its full scale, positive when it drives toward larger joint angles; None where unknown.
    """

    t: float
    positions: list[float | None]
    efforts: list[float | None] = field(default_factory=list)


def write_eeprom(bus: ServoBus, servo_id: int, register_name: str, value: int) -> None:
    """Write an EEPROM register, unlocking the Feetech EEPROM around it so the value persists.

    Dynamixel refuses EEPROM writes while torque is on; the caller turns torque off first.
    """
    ct = bus.control_table
    reg = ct.register(register_name)
    lock = ct.lock
    if lock is not None:
        bus.write(servo_id, lock.address, ct.encode(lock, 0))
        try:
            bus.write(servo_id, reg.address, ct.encode(reg, value))
        finally:
            bus.write(servo_id, lock.address, ct.encode(lock, 1))
    else:
        bus.write(servo_id, reg.address, ct.encode(reg, value))


@dataclass
class ControllerStats:
    cycles: int = 0
    reads_ok: int = 0
    connects: int = 0
    failed_connects: int = 0
    disconnects: int = 0
    goal_writes: int = 0
    homing_offsets_restored: int = 0
    drive_modes_restored: int = 0
    position_limits_written: int = 0
    stall_events: int = 0
    last_error: str = ''
    last_error_time: float | None = None
    missing_events: dict[int, int] = field(default_factory=dict)


class ArmController:
    """Owns one arm's ServoBus; every public method is thread-safe."""

    def __init__(
        self,
        arm: ArmConfig,
        calibration: ArmCalibration,
        *,
        read_rate_hz: float | None = None,
        command_timeout_s: float | None = None,
        max_step_rad: float | None = None,
        max_velocity_rad_s: float | None = None,
        estop_action: str = 'hold',
        torque_on_start: bool = True,
        missing_after: int = 5,
        link_lost_after_s: float = 0.5,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        bus_factory: Callable[..., ServoBus] = ServoBus,
        log: Log | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: the time trajectories are stamped in (the node's ROS clock: sim time under sim)."""
        if arm.protocol not in ('feetech', 'dynamixel'):
            raise ValueError(f'arm {arm.name!r}: protocol {arm.protocol!r} has no servo bus (sim arms use sim_rig)')
        if estop_action not in ('hold', 'torque_off'):
            raise ValueError(f'estop_action must be hold or torque_off, not {estop_action!r}')
        self.arm = arm
        self.calibration = calibration
        self.read_rate_hz = read_rate_hz or arm.read_rate_hz
        self.estop_action = estop_action
        self.missing_after = missing_after
        self.link_lost_after_s = link_lost_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._bus_factory = bus_factory
        self._log = log or (lambda level, msg: None)
        self.lock = threading.RLock()

        self.joint_names = [j.name for j in arm.joints]
        self.qualified_names = arm.qualified_joint_names()
        self.ids = [j.id for j in arm.joints]
        self.filter = CommandFilter(
            [JointLimit(q, j.lower, j.upper) for q, j in zip(self.qualified_names, arm.joints, strict=True)],
            max_step_rad=max_step_rad or arm.max_step_rad,
            command_timeout_s=command_timeout_s or arm.command_timeout_s,
            max_velocity_rad_s=max_velocity_rad_s or arm.max_velocity_rad_s,
            tick_period_s=1.0 / self.read_rate_hz,
        )
        self.filter.set_enabled(torque_on_start)
        self.torque_wanted = torque_on_start
        self.clock = clock
        self._clock_now: float | None = None  # the trajectory clock at the latest cycle's write
        self._clock_given: float | None = None  # the cycle's clock_now argument, if any
        self.player = TrajectoryPlayer(self.qualified_names, log=self._log_trajectory)

        self.bus: ServoBus | None = None
        self.connected = False
        self.missing: set[int] = set()
        self._misses = dict.fromkeys(self.ids, 0)
        self._last_any_reply: float | None = None
        self._backoff_s = backoff_initial_s
        self._next_connect = 0.0
        self.stats = ControllerStats()
        self._past_counters: dict[str, int] = {}
        self.stall_guard = StallGuard(len(self.ids), load_fraction=arm.stall_load_fraction, time_s=arm.stall_time_s)
        self._effort_scale: dict[int, float] = {}  # servo id -> raw effort value at full scale

    # ------------------------------------------------------------ utilities

    def _error(self, message: str, level: str = 'error') -> None:
        self.stats.last_error = message
        self.stats.last_error_time = time.monotonic()
        self._log(level, message)

    def _ticks_to_rad(self, index: int, ticks: int) -> float:
        return self.calibration.to_radians(self.joint_names[index], ticks)

    def _rad_to_ticks(self, index: int, rad: float) -> int:
        return self.calibration.to_ticks(self.joint_names[index], rad)

    @property
    def present_ids(self) -> list[int]:
        return [i for i in self.ids if i not in self.missing]

    @property
    def motion_allowed(self) -> bool:
        """Missing servos block motion unless the rig allows running without them."""
        return self.connected and (not self.missing or self.arm.allow_missing_servos)

    # ----------------------------------------------------------- connection

    def _connect(self, now: float) -> bool:
        """Open the bus, find the servos, restore homing offsets and position limits, take over without moving."""
        bus = self._bus_factory(self.arm.port, self.arm.protocol, self.arm.baudrate)
        try:
            bus.open()
            missing = set()
            models: dict[int, int] = {}
            for sid in self.ids:
                try:
                    models[sid] = bus.ping(sid)
                except PortError:
                    raise
                except BusError:
                    missing.add(sid)
            if len(missing) == len(self.ids):
                raise BusError(f'no servo answered on {self.arm.port} (ids {self.ids})')
            if missing and not self.arm.allow_missing_servos:
                self._error(
                    f'arm {self.arm.name}: servo(s) {sorted(missing)} do not answer on {self.arm.port}; '
                    'not moving the arm (set allow_missing_servos: true to run without them)'
                )
            elif missing:
                self._error(f'arm {self.arm.name}: servo(s) {sorted(missing)} missing; running without them', 'warn')
            self.bus, self.missing = bus, missing
            self._misses = {sid: (self.missing_after if sid in missing else 0) for sid in self.ids}
            if not self.calibration.is_identity:
                self._restore_homing_offsets()
                self._restore_position_limits()
            for sid, model in models.items():
                self._learn_effort_scale(sid, model)
            positions = self._read_positions_once()
            self.filter.reset_to(positions)
            self.player.clear('reconnect')  # like a command target: not resumed after an outage
            if self.torque_wanted:
                self._torque_on(positions)
            else:
                self._write_torque(False)
        except Exception as exc:  # any failure while taking over the arm: report, back off, retry
            self._retire(bus)
            self.bus = None
            message = f'arm {self.arm.name}: cannot connect to {self.arm.port}: {exc}'
            if message != self.stats.last_error:  # a long outage logs once, not at every retry
                self._error(message)
            self.stats.failed_connects += 1
            self._schedule_reconnect(now)
            return False
        self.connected = True
        self.stats.connects += 1
        self._backoff_s = self.backoff_initial_s
        self._last_any_reply = now
        self._log('info', f'arm {self.arm.name}: connected on {self.arm.port} ({len(self.present_ids)} servos)')
        return True

    def _schedule_reconnect(self, now: float) -> None:
        self._next_connect = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2.0, self.backoff_max_s)

    def _retire(self, bus: ServoBus) -> None:
        """Close a bus and keep its counters, so diagnostics count across reconnects."""
        bus.close()
        for key, value in bus.counters.as_dict().items():
            self._past_counters[key] = self._past_counters.get(key, 0) + value

    def _disconnect(self, reason: str, now: float) -> None:
        if self.bus is not None:
            self._retire(self.bus)
        self.bus = None
        self.missing = set()
        if self.connected:
            self.stats.disconnects += 1
            self._error(f'arm {self.arm.name}: lost {self.arm.port}: {reason}; reconnecting')
        self.connected = False
        self._schedule_reconnect(now)

    def _restore_homing_offsets(self) -> None:
        """The calibrated ranges assume the servo's homing offset (and drive mode); put them back if they differ."""
        assert self.bus is not None
        ct = self.bus.control_table
        for name, sid in zip(self.joint_names, self.ids, strict=True):
            if sid in self.missing:
                continue
            want = self.calibration.joints[name].homing_offset
            have = ct.decode(ct.homing_offset, self.bus.read(sid, ct.homing_offset.address, ct.homing_offset.length))
            if have != want:
                self._error(
                    f'arm {self.arm.name}: servo {sid} ({name}) homing offset is {have}, calibration says {want}; '
                    'writing the calibrated value (torque off for the write)',
                    'warn',
                )
                self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
                write_eeprom(self.bus, sid, 'homing_offset', want)
                self.stats.homing_offsets_restored += 1
            self._restore_drive_mode(name, sid)

    def _restore_drive_mode(self, name: str, sid: int) -> None:
        """Dynamixel: the calibrated ticks assume Drive_Mode bit 0 (reverse) as the calibration says; put it back.

        A LeRobot calibration with ``drive_mode: 1`` counts on the servo reversing itself (the Koch
        leader's elbow_flex); on a servo without that bit the joint would run backwards. Other bits
        of the register are kept.
        """
        assert self.bus is not None
        ct = self.bus.control_table
        reg = ct.drive_mode
        if reg is None:
            return
        want = self.calibration.joints[name].drive_mode
        have = ct.decode(reg, self.bus.read(sid, reg.address, reg.length))
        if have & 1 != want:
            self._error(
                f'arm {self.arm.name}: servo {sid} ({name}) drive mode (reverse bit) is {have & 1}, calibration '
                f'says {want}; writing the calibrated value (torque off for the write)',
                'warn',
            )
            self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
            write_eeprom(self.bus, sid, 'drive_mode', (have & ~1) | want)
            self.stats.drive_modes_restored += 1

    def _restore_position_limits(self, only: Sequence[int] | None = None) -> None:
        """The servos' own Min/Max_Position_Limit must hold the joint limits; write them where they differ.

        The servo compares a goal with these registers in present-position ticks (after its homing
        offset), so a host that goes wrong cannot command a joint outside its range however it tries.
        ``only``: check just these servo ids (a servo that was missing at connect and is back).
        """
        assert self.bus is not None
        ct = self.bus.control_table
        low_reg, high_reg = ct.min_position_limit, ct.max_position_limit
        start = min(low_reg.address, high_reg.address)
        length = max(low_reg.address + low_reg.length, high_reg.address + high_reg.length) - start
        for joint, sid in zip(self.arm.joints, self.ids, strict=True):
            if sid in self.missing or (only is not None and sid not in only):
                continue
            want = self.calibration.position_limit_ticks(joint.name, joint.lower, joint.upper)
            data = self.bus.read(sid, start, length)
            have = (ct.decode_at(low_reg, data, start), ct.decode_at(high_reg, data, start))
            if have == want:
                continue
            self._error(
                f'arm {self.arm.name}: servo {sid} ({joint.name}) position limits are [{have[0]}, {have[1]}], '
                f'the calibration and joint limits give [{want[0]}, {want[1]}]; '
                'writing them (torque off for the write)',
                'warn',
            )
            self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
            # Never leave min above max in between: raise the maximum first when the range moves up.
            order = [('max_position_limit', want[1]), ('min_position_limit', want[0])]
            if want[0] <= have[1]:
                order.reverse()
            try:
                for name, value in order:
                    write_eeprom(self.bus, sid, name, value)
            except PortError:
                raise
            except BusError as exc:
                self._error(f'arm {self.arm.name}: servo {sid} ({joint.name}) refused its position limits: {exc}')
                continue
            self.stats.position_limits_written += 1

    def _learn_effort_scale(self, sid: int, model: int) -> None:
        """How a servo's effort register reads at full scale: a fixed load scale, or its current limit."""
        assert self.bus is not None
        ct = self.bus.control_table
        if ct.effort is None:
            return
        if ct.reports_load(model):
            self._effort_scale[sid] = float(ct.load_full_scale)
            return
        assert ct.current_limit is not None
        try:
            limit = ct.decode(ct.current_limit, self.bus.read(sid, ct.current_limit.address, ct.current_limit.length))
        except PortError:
            raise
        except BusError as exc:
            self._error(f'arm {self.arm.name}: servo {sid}: no current limit ({exc}); no stall guard', 'warn')
            return
        if limit > 0:
            self._effort_scale[sid] = float(limit)
        else:
            self._error(f'arm {self.arm.name}: servo {sid}: current limit is 0; no stall guard for it', 'warn')

    def _read_positions_once(self) -> list[float | None]:
        assert self.bus is not None
        ct = self.bus.control_table
        reg = ct.present_position
        replies = self.bus.sync_read(self.present_ids, reg.address, reg.length) if self.present_ids else {}
        out: list[float | None] = []
        for i, sid in enumerate(self.ids):
            data = replies.get(sid)
            out.append(None if data is None else self._ticks_to_rad(i, ct.decode(reg, data)))
        return out

    def _write_goals(self, goals: dict[int, float]) -> None:
        assert self.bus is not None
        ct = self.bus.control_table
        reg = ct.goal_position
        data = {
            self.ids[i]: ct.encode(reg, self._rad_to_ticks(i, rad))
            for i, rad in goals.items()
            if self.ids[i] not in self.missing
        }
        if data:
            self.bus.sync_write(reg.address, data)
            self.stats.goal_writes += 1

    def _write_torque(self, on: bool) -> list[int]:
        """Torque on/off for every present servo; returns the ids that failed (port errors propagate)."""
        assert self.bus is not None
        ct = self.bus.control_table
        failed = []
        for sid in self.present_ids:
            try:
                self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, int(on)))
            except PortError:
                raise
            except BusError as exc:
                failed.append(sid)
                self._error(f'arm {self.arm.name}: torque {"on" if on else "off"} failed for servo {sid}: {exc}')
        return failed

    def _torque_on(self, positions: Sequence[float | None]) -> list[int]:
        """Goal = present position first, then torque: a servo never lunges at an old goal."""
        self.filter.reset_to(positions)
        self.player.clear('torque')
        self.stall_guard.reset()
        self._write_goals({i: p for i, p in enumerate(self.filter.goal) if p is not None})
        failed = self._write_torque(True)
        self.filter.set_enabled(True)
        return failed

    # ---------------------------------------------------------------- cycle

    def cycle(self, now: float | None = None, clock_now: float | None = None) -> Reading | None:
        """One read (+ write) cycle. Returns the reading, or None while not connected.

        ``now``: monotonic seconds (the filter's ramp and watchdog); ``clock_now``: the trajectory
        clock's time of this cycle's write (default: ``clock()`` read after the servos' reply, just
        before the goals go out, so a trajectory's value is the one for the moment it is written).
        """
        now = time.monotonic() if now is None else now
        self._clock_given = clock_now
        with self.lock:
            self.stats.cycles += 1
            if not self.connected:
                if now < self._next_connect or not self._connect(now):
                    return None
            try:
                return self._cycle_connected(now)
            except PortError as exc:
                self._disconnect(str(exc), now)
                return None
            except BusError as exc:
                self._error(f'arm {self.arm.name}: bus error: {exc}', 'warn')
                return None
            except Exception as exc:  # e.g. termios.error from a vanished tty: treat as a lost port, never die
                self._disconnect(f'{type(exc).__name__}: {exc}', now)
                return None

    def _cycle_connected(self, now: float) -> Reading:
        assert self.bus is not None
        ct = self.bus.control_table
        reg = ct.present_position
        address, length = ct.state_block()  # position and load/current in one read
        try:
            replies = self.bus.sync_read(self.ids, address, length)
        except PortError:
            raise
        except BusError as exc:
            self._error(f'arm {self.arm.name}: sync read failed: {exc}', 'warn')
            replies = {}
        positions: list[float | None] = []
        efforts: list[float | None] = []
        for i, sid in enumerate(self.ids):
            data = replies.get(sid)
            if data is None:
                positions.append(None)
                efforts.append(None)
                self._note_miss(i, sid)
                continue
            rad = self._ticks_to_rad(i, ct.decode_at(reg, data, address))
            positions.append(rad)
            self._note_reply(i, sid, rad)
            efforts.append(self._effort(i, sid, data, address))
        if any(p is not None for p in positions):
            self._last_any_reply = now
            self.stats.reads_ok += 1
        elif self._last_any_reply is not None and now - self._last_any_reply > self.link_lost_after_s:
            self._disconnect(f'no servo answered for {now - self._last_any_reply:.2f} s', now)
            return Reading(now, positions, efforts)
        if not self.filter.enabled:
            # Torque off: keep goals on the measured positions so re-enabling never jumps.
            for i, p in enumerate(positions):
                if p is not None:
                    self.filter.goal[i] = p
            self.stall_guard.reset()
        else:
            goals = self._guard_stalls(now, positions, efforts)  # holding still is allowed even when moving is not
            if self.motion_allowed:
                self._play_trajectory(now)
                goals.update(self.filter.tick(now) or {})
            if goals:
                self._write_goals(goals)
        return Reading(now, positions, efforts)

    def _play_trajectory(self, now: float) -> None:
        """The trajectory's value at this cycle's clock time becomes the filter's command."""
        if self.filter.estopped or not self.player.active:  # e-stop drops the trajectory; never played through it
            return
        self._clock_now = self.clock() if self._clock_given is None else self._clock_given
        sample = self.player.sample(self._clock_now)
        if sample is None:
            return
        if sample.finished:
            self._log('info', f'arm {self.arm.name}: trajectory ran out; holding its last point')
        known = [i for i, v in enumerate(sample.positions) if math.isfinite(v)]
        if known:
            names = [self.qualified_names[i] for i in known]
            self.filter.submit(names, [float(sample.positions[i]) for i in known], now)

    def _log_trajectory(self, level: str, message: str) -> None:
        self._log(level, f'arm {self.arm.name}: {message}')

    def _effort(self, index: int, sid: int, data: bytes, address: int) -> float | None:
        """The servo's load/current in ``data`` as a fraction of full scale, signed in the joint's direction."""
        assert self.bus is not None
        ct = self.bus.control_table
        scale = self._effort_scale.get(sid)
        if ct.effort is None or scale is None:
            return None
        raw = ct.decode_at(ct.effort, data, address)
        return self.calibration.joints[self.joint_names[index]].direction * raw / scale

    def _guard_stalls(self, now: float, positions: list[float | None], efforts: list[float | None]) -> dict[int, float]:
        """Hold the joints that pushed into an obstacle for ``stall_time_s``; returns their goals to write.

        Also releases held joints that a command has since moved away from their obstacle.
        """
        held: dict[int, float] = {}
        for event in self.stall_guard.update(now, positions, efforts, self.filter.goal):
            self._on_stall(event)
            goal = self.filter.goal[event.index]
            if goal is not None:
                held[event.index] = goal
        for i in self.filter.release_blocks(positions, RELEASE_RAD):
            self._log('info', f'arm {self.arm.name}: {self.joint_names[i]} moved away from its obstacle; released')
        return held

    def _on_stall(self, event: StallEvent) -> None:
        self.filter.block(event.index, event.position, event.direction)
        self.stats.stall_events += 1
        self._log(
            'warn',
            f'arm {self.arm.name}: {self.joint_names[event.index]} pushed at {abs(event.effort):.0%} of full load '
            f'for {event.pushed_s:.2f} s without moving; holding it at {event.position:+.3f} rad and not pushing '
            f'further toward {"larger" if event.direction > 0 else "smaller"} angles until a command moves it back',
        )

    def _note_miss(self, index: int, sid: int) -> None:
        self._misses[sid] += 1
        if self._misses[sid] == self.missing_after and sid not in self.missing:
            self.missing.add(sid)
            self.stats.missing_events[sid] = self.stats.missing_events.get(sid, 0) + 1
            what = 'continuing with the others' if self.arm.allow_missing_servos else 'holding the arm until it is back'
            self._error(f'arm {self.arm.name}: servo {sid} ({self.joint_names[index]}) stopped answering; {what}')

    def _note_reply(self, index: int, sid: int, rad: float) -> None:
        self._misses[sid] = 0
        if sid in self.missing:
            self.missing.discard(sid)
            self._log('info', f'arm {self.arm.name}: servo {sid} ({self.joint_names[index]}) answers again')
            self.filter.set_goal(index, rad)
            if sid not in self._effort_scale and self.bus is not None:  # missing since connect: not checked yet
                try:
                    self._learn_effort_scale(sid, self.bus.ping(sid))
                    if not self.calibration.is_identity:
                        self._restore_position_limits([sid])  # before its torque goes back on below
                except PortError:
                    raise
                except BusError as exc:
                    self._error(f'arm {self.arm.name}: servo {sid} back but not checked: {exc}', 'warn')
            if self.filter.enabled and self.bus is not None:
                # It may have lost power: put its goal on where it is before torquing it.
                ct = self.bus.control_table
                goal = ct.encode(ct.goal_position, self._rad_to_ticks(index, rad))
                try:
                    self.bus.write(sid, ct.goal_position.address, goal)
                    self.bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 1))
                except PortError:
                    raise
                except BusError as exc:
                    self._error(f'arm {self.arm.name}: servo {sid} back but torque on failed: {exc}', 'warn')

    # ------------------------------------------------------------- commands

    def submit_command(self, names: Sequence[str], positions: Sequence[float], now: float | None = None) -> list[str]:
        """Validate and accept a command (see CommandFilter.submit); raises CommandRejected.

        The newest source wins: an accepted command drops the trajectory in play.
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            notes = self.filter.submit(names, positions, now)
            if self.player.clear('command'):
                notes.append('a joint command took over from the trajectory in play')
            return notes

    def submit_trajectory(self, trajectory: Trajectory, clock_now: float | None = None) -> tuple[str, list[str]]:
        """Validate a trajectory and splice it in (see TrajectoryPlayer.submit): ('started' | 'spliced' | 'stop',
        notes about points beyond the joint limits, which the filter clamps). Raises TrajectoryRejected (counted
        in ``player.counters``); refused while the e-stop is active or torque is off, like a command."""
        clock_now = self.clock() if clock_now is None else clock_now
        with self.lock:
            blocked = None
            if self.filter.estopped:
                blocked = TrajectoryRejected('estop', 'e-stop is active: trajectories are ignored until it is released')
            elif not self.filter.enabled:
                blocked = TrajectoryRejected('torque_off', 'torque is off: enable it before sending a trajectory')
            if blocked is not None and trajectory.positions:  # an empty one (stop) is always taken
                self.player.counters['rejected'] += 1
                self.player.counters[f'rejected_{blocked.reason}'] += 1
                raise blocked
            outcome = self.player.submit(trajectory, clock_now, self.filter.goal)
            notes = []
            for k, name in enumerate(trajectory.joint_names):
                limit = self.filter.joints[self.filter.index[name]]
                values = [row[k] for row in trajectory.positions]
                if values and (min(values) < limit.lower or max(values) > limit.upper):
                    notes.append(f'{name}: points outside [{limit.lower:+.4f}, {limit.upper:+.4f}] are clamped')
            return outcome, notes

    def set_estop(self, active: bool) -> None:
        with self.lock:
            was = self.filter.estopped
            self.filter.set_estop(active)
            if active:
                self.player.clear('estop')
            if active and not was:
                self._log('warn', f'arm {self.arm.name}: E-STOP active ({self.estop_action})')
                if self.estop_action == 'torque_off':
                    self.torque_wanted = False
                    self.filter.set_enabled(False)
                    if self.connected:
                        try:
                            self._write_torque(False)
                        except PortError as exc:
                            self._disconnect(str(exc), time.monotonic())
            elif was and not active:
                extra = ' torque stays off until the torque service turns it on;' if not self.filter.enabled else ''
                self._log('info', f'arm {self.arm.name}: e-stop released;{extra} waiting for a new command')

    def set_torque(self, on: bool) -> tuple[bool, str]:
        """Torque service: returns (success, message)."""
        with self.lock:
            if on and self.filter.estopped and self.estop_action == 'torque_off':
                return False, 'e-stop is active (estop_action torque_off): release it before enabling torque'
            self.torque_wanted = on
            if not self.connected:
                self.filter.set_enabled(on)
                self.player.clear('torque')
                return False, f'arm {self.arm.name} is not connected; torque will be {"on" if on else "off"} on connect'
            try:
                if on:
                    failed = self._torque_on(self._read_positions_once())
                else:
                    failed = self._write_torque(False)
                    self.filter.set_enabled(False)
                    self.player.clear('torque')
            except PortError as exc:
                self._disconnect(str(exc), time.monotonic())
                return False, f'port error: {exc}'
            except BusError as exc:
                return False, f'bus error: {exc}'
            if failed:
                return False, f'torque {"on" if on else "off"} failed for servo(s) {failed}'
            return True, f'torque {"on" if on else "off"} for servo(s) {self.present_ids}'

    def close(self, torque_off: bool = False) -> None:
        """Leave the arm in its safe state and release the port.

        The safe state: with `torque_off` every servo is released (the arm may fall); otherwise it
        holds where it is now (goals written on the present positions, torque stays on), so nothing
        keeps moving towards a goal the driver set before it stopped.
        """
        with self.lock:
            if self.bus is not None and self.connected:
                try:
                    if torque_off:
                        self._write_torque(False)
                    elif self.filter.enabled:
                        present = self._read_positions_once()
                        self._write_goals({i: p for i, p in enumerate(present) if p is not None})
                        # A sync write has no reply: a read after it returns once the servos have taken
                        # it, so closing the port cannot cut it off in the adapter's or the pty's buffer.
                        self._read_positions_once()
                except Exception as exc:  # a vanished port: nothing more can be done, say so
                    self._error(f'arm {self.arm.name}: could not leave the arm in its safe state: {exc}')
            if self.bus is not None:
                self._retire(self.bus)
            self.bus = None
            self.connected = False

    # ---------------------------------------------------------- diagnostics

    def snapshot(self) -> dict[str, object]:
        """Values for the diagnostics message (rates are computed by the caller from ``stats.cycles``)."""
        with self.lock:
            counters = dict(self._past_counters)
            if self.bus is not None:
                for key, value in self.bus.counters.as_dict().items():
                    counters[key] = counters.get(key, 0) + value
            values: dict[str, object] = {
                'connected': self.connected,
                'port': self.arm.port,
                'state': self.filter.state if self.connected else 'disconnected',
                'torque': 'on' if self.filter.enabled else 'off',
                'estop': self.filter.estopped,
                'missing_servos': sorted(self.missing),
                'calibration': self.calibration.source,
                'connects': self.stats.connects,
                'failed_connects': self.stats.failed_connects,
                'disconnects': self.stats.disconnects,
                'goal_writes': self.stats.goal_writes,
                'stall_events': self.stats.stall_events,
                'stalled_joints': [self.joint_names[i] for i, b in enumerate(self.filter.blocked) if b is not None],
                'trajectory': self.player.state(self._clock_now),
                'position_limits_written': self.stats.position_limits_written,
                'last_error': self.stats.last_error or '-',
            }
            for key, value in counters.items():
                values[f'bus_{key}'] = value
            for key, value in sorted(self.filter.counters.items()):
                values[f'cmd_{key}'] = value
            for key, value in sorted(self.player.counters.items()):
                values[f'trajectory_{key}'] = value
            return values


__all__ = ['ArmController', 'CommandRejected', 'Reading', 'write_eeprom']
