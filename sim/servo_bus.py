"""Simulated arms behind emulated servo buses, so the real ``arm_driver`` drives the simulation.

In this mode each simulated arm is a :class:`bimanual_vla.drivers.servo.emulator.ServoBusEmulator` on a
pseudo-terminal, in external-motion mode: the physics thread writes every joint's
position into its servo's present-position register, and goal-position writes coming
down the bus become the simulation's joint targets. ``arm_driver`` opens the pty as it
would open ``/dev/ttyACM0`` and runs with no change at all: protocol, sync reads and
writes, torque, watchdog, e-stop, calibration, reconnects are all the real code.

What a driver needs is written to a directory, deterministically, *before* any pty
exists (so a launch file can start the drivers at the same time as the simulator):

* ``<rig>_servo_bus.yaml``: the sim rig with every arm on ``protocol: feetech|dynamixel``,
  ``port: <dir>/<arm>.tty`` and ``calibration: <dir>/<arm>.calibration.json``;
* ``<arm>.calibration.json``: 0 rad (or 0 m) at tick 2048, ticks increasing with the joint,
  4096 ticks per turn, range = the joint limits (ticks 0..4096 for the ALOHA's ±pi joints: the
  emulated servos' max-position-limit register is set to 4096 so +pi is reachable, not cut to 4095);
* ``<arm>.tty``: a symlink to the arm's pty, made when the simulator starts and removed
  when it stops. A driver started earlier just retries until it appears (its usual
  reconnect with backoff), and reconnects by itself to a restarted simulator.

The SO-101 twin (``config/rigs/so101_sim.yaml``, arms on ``protocol: feetech``) uses the same class
in its *physical* form instead (:func:`twin_buses`): the rig file is the drivers' rig as it is, each
pty is linked at the arm's own ``port``, the drivers use the rig's own calibration files, and the
servos power up factory-fresh (homing offset 0, position limits 0..4095) with their horns mounted
as :class:`ServoHorn` says. Then a servo reports its *raw* encoder ticks minus its homing offset
(Feetech; plus, Dynamixel), whichever offset calibration or a driver wrote, exactly as hardware
does; goals are turned back into joint angles through the same registers; present load is the
simulated actuator torque as a fraction of the stall torque, so it rises when a joint pushes
against the table, an object or the other arm, and the driver's stall guard sees it.

Units: the calibration maps ``ticks -> (ticks - 2048) * 2*pi/4096`` for every joint, the
arm driver's one mapping. Revolute joints come out in radians, exactly as a real servo's
angle would. The ALOHA gripper joint is a finger's slide in *metres*, and the same mapping
makes one tick worth 2*pi/4096 m = 1.53 mm: the driver publishes and accepts metres, as
the policy expects, at a 1.53 mm resolution (23 ticks from closed 0.021 to open 0.057).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bimanual_vla.config import ArmConfig, ConfigError, RigConfig
from bimanual_vla.drivers.servo.calibration import ArmCalibration, JointCalibration, now_iso
from bimanual_vla.drivers.servo.emulator import EmulatedServo, FaultConfig, ServoBusEmulator

SERVO_BUS_PROTOCOLS = ('feetech', 'dynamixel')
RESOLUTION = 4096  # ticks per turn of the emulated STS3215 / Dynamixel X servos
ZERO_TICKS = RESOLUTION // 2  # 0 rad (0 m for the gripper) at the servo's mid-point
RAD_PER_TICK = 2.0 * math.pi / RESOLUTION
MAX_TICKS = RESOLUTION  # max-position-limit of the emulated servos: -pi..+pi is ticks 0..4096, both ends included


def check_protocol(protocol: str) -> str:
    """The protocol name, or ConfigError naming the choices."""
    if protocol not in SERVO_BUS_PROTOCOLS:
        raise ConfigError(f'servo_bus must be one of {list(SERVO_BUS_PROTOCOLS)} (or empty: off), got {protocol!r}')
    return protocol


def default_directory(rig_name: str) -> Path:
    """Per user, rig and ROS domain: two simulators on different domains never share ptys or files."""
    base = os.environ.get('XDG_RUNTIME_DIR') or os.path.join(tempfile.gettempdir(), f'bimanual_vla-{os.getuid()}')
    domain = os.environ.get('ROS_DOMAIN_ID', '0') or '0'
    return Path(base) / 'bimanual_vla' / f'{rig_name}_servo_bus_domain{domain}'


def rig_file(directory: str | os.PathLike[str], rig: RigConfig) -> Path:
    return Path(directory) / f'{rig.name}_servo_bus.yaml'


def port_link(directory: str | os.PathLike[str], arm: str) -> Path:
    return Path(directory) / f'{arm}.tty'


def calibration_file(directory: str | os.PathLike[str], arm: str) -> Path:
    return Path(directory) / f'{arm}.calibration.json'


def to_ticks(value: float) -> int:
    """Present-position ticks for a joint value (rad, or m for the gripper); not clamped."""
    return round(ZERO_TICKS + value / RAD_PER_TICK)


def to_value(ticks: int) -> float:
    return (ticks - ZERO_TICKS) * RAD_PER_TICK


def servo_calibration(arm: ArmConfig, protocol: str) -> ArmCalibration:
    """Calibration matching what the simulator writes: zero at 2048, range = the limits within ticks 0..4096."""
    joints = {}
    for j in arm.joints:
        low = max(0, math.floor(ZERO_TICKS + j.lower / RAD_PER_TICK))
        high = min(MAX_TICKS, math.ceil(ZERO_TICKS + j.upper / RAD_PER_TICK))
        joints[j.name] = JointCalibration(
            id=j.id, homing_offset=0, range_min=low, range_max=high, direction=1, zero_ticks=ZERO_TICKS
        )
    return ArmCalibration(
        arm=arm.name, protocol=protocol, resolution=RESOLUTION, source='manual', created=now_iso(), joints=joints
    )


def servo_bus_rig(rig: RigConfig, protocol: str, directory: str | os.PathLike[str]) -> RigConfig:
    """The rig as the arm drivers see it: bus arms on the pty links, limits within ticks 0..4096.

    The ALOHA's limits all fit (±pi is ticks 0..4096), so they stay the sim's; a rig with joints
    beyond ±pi would have them cut to what one turn of ticks can say.
    """
    check_protocol(protocol)
    arms = []
    for arm in rig.arms:
        calib = servo_calibration(arm, protocol)
        joints = []
        for j in arm.joints:
            low, high = calib.range_radians(j.name)
            joints.append(j.model_copy(update={'lower': max(j.lower, low), 'upper': min(j.upper, high)}))
        arms.append(
            arm.model_copy(
                update={
                    'protocol': protocol,
                    'port': str(port_link(directory, arm.name)),
                    'calibration': str(calibration_file(directory, arm.name)),
                    'joints': joints,
                }
            )
        )
    return RigConfig.model_validate(
        {**rig.model_dump(), 'name': f'{rig.name}_servo_bus', 'arms': [a.model_dump() for a in arms], 'sim': None}
    )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_servo_bus_rig(rig: RigConfig, protocol: str, directory: str | os.PathLike[str]) -> Path:
    """Write the drivers' rig YAML and one calibration per arm into ``directory``; return the rig file.

    Deterministic apart from the calibrations' ``created`` stamp and written atomically, so the
    bringup and the simulator may both write it, in any order, while a driver reads it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    bus_rig = servo_bus_rig(rig, protocol, directory)
    for arm in rig.arms:
        servo_calibration(arm, protocol).save(calibration_file(directory, arm.name))
    data = bus_rig.model_dump(exclude={'sim'})
    header = (
        f'# Generated by the sim_rig node (servo_bus: {protocol}) from rig {rig.name}: every simulated arm is an\n'
        f'# emulated {protocol} servo bus on the pty its port links to while the simulator runs.\n'
        f'# Start a driver with: arm_driver --ros-args -p rig:={rig_file(directory, rig)} -p arm:=<arm>\n'
        '# Cameras stay in the simulator (their source "sim" is not a camera_driver source).\n'
    )
    path = rig_file(directory, rig)
    _write_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class ServoHorn:
    """How a simulated joint turns its servo: the raw encoder tick at joint angle 0 and which way ticks count.

    A real arm's horns are mounted wherever the spline teeth allowed; calibration finds out. The
    default is a servo centred before its horn went on (raw 2048 at the joint's zero), counting up
    with the joint (LeRobot's SO-101 follower: drive_mode 0 on every motor).
    """

    raw_zero: int = ZERO_TICKS
    direction: int = 1

    def raw_ticks(self, value: float) -> float:
        return self.raw_zero + self.direction * value / RAD_PER_TICK

    def value(self, raw_ticks: float) -> float:
        return self.direction * (raw_ticks - self.raw_zero) * RAD_PER_TICK


class _SimDrivenServo(EmulatedServo):
    """An emulated servo whose present load comes from the simulator (external motion), not from its own model."""

    sim_load = 0.0  # signed fraction of full scale, set by the physics thread

    def _advance(self) -> None:
        super()._advance()
        if self._owner.external_motion:
            self._store_load(self.sim_load)


class _SimBusEmulator(ServoBusEmulator):
    """The project's servo bus emulator with :class:`_SimDrivenServo` servos (everything else unchanged)."""

    def __init__(self, protocol: str, ids: Sequence[int], faults: FaultConfig) -> None:
        super().__init__(protocol, ids, faults=faults)
        for sid, servo in list(self._servos.items()):
            self._servos[sid] = _SimDrivenServo(
                self.table, sid, servo.read_register('model_number'), servo.max_speed, self._lock, self
            )


class SimServoBus:
    """One simulated arm's emulated bus: positions in, goals and torque out.

    Thread use: :meth:`publish_positions`, :meth:`take_goals`, :meth:`torque_off` and
    :meth:`update` are called by the physics thread; ``on_goal`` runs on the emulator's
    thread and only queues, so the emulator's thread never waits for the simulator's lock
    (no lock-order cycle, whatever the physics thread holds).
    """

    def __init__(
        self,
        arm: ArmConfig,
        protocol: str,
        link: str | os.PathLike[str],
        horns: Mapping[str, ServoHorn] | None = None,
    ) -> None:
        """``horns`` (joint name -> ServoHorn): the physical twin, factory-fresh servos reporting raw
        ticks through their homing offsets. None: the calibrated servos of the ALOHA servo-bus mode."""
        self.arm = arm
        self.protocol = check_protocol(protocol)
        self.link = Path(link)
        self.ids = [j.id for j in arm.joints]
        self._name_of = {j.id: j.name for j in arm.joints}
        self.factory_fresh = horns is not None
        self.horns = [(horns or {}).get(j.name, ServoHorn()) for j in arm.joints]
        self._horn_of = dict(zip(self.ids, self.horns, strict=True))
        self.emulator = _SimBusEmulator(protocol, self.ids, FaultConfig())
        self.emulator.external_motion = True
        self._goal_lock = threading.Lock()
        self._pending: dict[int, int] = {}
        self.goals_received = 0
        self._hidden_until: tuple[int, float] | None = None
        self.power_cycles = 0

    @property
    def port(self) -> str:
        return self.emulator.port

    def start(self, positions: Sequence[float]) -> str:
        """Open the pty, power the servos up holding ``positions`` (torque on), and link the port; return the pty.

        Torque starts on so an episode begins the same whether or not a driver is connected yet;
        a driver taking over writes goal = present position, then torque on: nothing moves.
        """
        pty = self.emulator.start()
        if self.factory_fresh:
            self._power_up_physical(positions)
        else:
            self._power_up_calibrated(positions)
        self.emulator.on_goal = self._on_goal
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f'.{self.link.name}.{os.getpid()}.tmp')
        tmp.unlink(missing_ok=True)
        os.symlink(pty, tmp)
        os.replace(tmp, self.link)  # atomic: a driver never sees a missing or half-made link while we replace it
        return pty

    def _power_up_calibrated(self, positions: Sequence[float]) -> None:
        calibration = servo_calibration(self.arm, self.protocol)
        for sid, joint, value in zip(self.ids, self.arm.joints, positions, strict=True):
            servo = self.emulator.servo(sid)
            # The position limits a calibrated arm's servos hold (what the driver checks on connect), so it
            # finds nothing to rewrite; EEPROM: written while torque is still off.
            low, high = calibration.position_limit_ticks(joint.name, joint.lower, joint.upper)
            servo.write_register('min_position_limit', low)
            servo.write_register('max_position_limit', high)
            servo.set_present_position(to_ticks(value))
            servo.write_register('goal_position', max(low, min(high, to_ticks(value))))
            servo.write_register('torque_enable', 1)

    def _power_up_physical(self, positions: Sequence[float]) -> None:
        """Hold ``positions`` with whatever the EEPROM holds: factory values (homing offset 0, limits
        0..4095, the emulator's defaults) at the first start, what was written since at a later one."""
        for sid, value in zip(self.ids, positions, strict=True):
            servo = self.emulator.servo(sid)
            ticks = self._present_ticks(sid, float(value))
            servo.set_present_position(ticks)
            low, high = servo.read_register('min_position_limit'), servo.read_register('max_position_limit')
            servo.write_register('goal_position', max(low, min(high, ticks)))
            servo.write_register('torque_enable', 1)

    def _offset_sign(self) -> int:
        """Present = raw - offset on a Feetech STS, raw + offset on a Dynamixel."""
        return -1 if self.protocol == 'feetech' else 1

    def _present_ticks(self, sid: int, value: float) -> int:
        """What the servo reports for joint value ``value``: raw encoder ticks through its homing offset."""
        raw = self._horn_of[sid].raw_ticks(value)
        offset = self.emulator.servo(sid).read_register('homing_offset')
        return round(raw + self._offset_sign() * offset)

    def _goal_value(self, sid: int, ticks: int) -> float:
        offset = self.emulator.servo(sid).read_register('homing_offset')
        return self._horn_of[sid].value(ticks - self._offset_sign() * offset)

    def stop(self) -> None:
        """Remove the link (if it is still ours) and close the pty: connected drivers see the port vanish."""
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self.emulator.port:
                self.link.unlink()
        self.emulator.stop()

    # ----------------------------------------------------------- emulator side

    def _on_goal(self, servo_id: int, ticks: int) -> None:
        with self._goal_lock:
            self._pending[servo_id] = ticks
            self.goals_received += 1

    # ------------------------------------------------------------ physics side

    def publish_positions(self, positions: Sequence[float]) -> None:
        """Present-position registers from the simulated joint values (rig joint order)."""
        for sid, value in zip(self.ids, positions, strict=True):
            ticks = self._present_ticks(sid, float(value)) if self.factory_fresh else to_ticks(float(value))
            self.emulator.set_present_position(sid, ticks)

    def publish_loads(self, fractions: Sequence[float]) -> None:
        """Present load registers from the simulated actuator torques (signed fractions of stall torque).

        The sign follows the servo's tick direction, as a real servo reports the way it pushes.
        """
        for sid, fraction in zip(self.ids, fractions, strict=True):
            servo = self.emulator.servo(sid)
            servo.sim_load = float(fraction) * self._horn_of[sid].direction  # type: ignore[attr-defined]

    def take_goals(self) -> dict[str, float]:
        """Goals written over the bus since the last call, as {joint name: rad (m for the gripper)}."""
        with self._goal_lock:
            pending, self._pending = self._pending, {}
        if self.factory_fresh:
            return {self._name_of[sid]: self._goal_value(sid, t) for sid, t in pending.items() if sid in self._name_of}
        return {self._name_of[sid]: to_value(ticks) for sid, ticks in pending.items() if sid in self._name_of}

    def torque_off(self) -> list[str]:
        """Names of the joints whose servo has torque off (the simulator lets those go limp)."""
        return [self._name_of[sid] for sid in self.ids if not self.emulator.servo(sid).torque_enabled]

    def power_cycle(self, min_instructions: int = 12, max_s: float = 2.0) -> None:
        """Make the servos drop off the bus briefly (after an episode reset teleports the arm).

        The driver then sees every servo go missing and come back, and restarts its goals from
        the measured positions instead of dragging the arm back to where it was before the reset.
        Hidden until the driver has sent ``min_instructions`` more packets (>= 6 reads: it marks a servo
        missing after 5 misses, and sends at most one goal write per read), so it notices however
        loaded the machine is, or until ``max_s`` passed (no driver connected).
        """
        self.emulator.faults.missing_ids = set(self.ids)
        self._hidden_until = (self.emulator.instructions_received + min_instructions, time.monotonic() + max_s)
        self.power_cycles += 1

    def update(self) -> None:
        """Bring power-cycled servos back once the driver has noticed (called every physics tick)."""
        if self._hidden_until is None:
            return
        reads, deadline = self._hidden_until
        if self.emulator.instructions_received >= reads or time.monotonic() >= deadline:
            self.emulator.faults.missing_ids = set()
            self._hidden_until = None


def is_twin(rig: RigConfig) -> bool:
    """A physical twin: a rig with a `sim:` block whose arms are servo-bus arms (the rig file is the drivers')."""
    return rig.sim is not None and bool(rig.sim.servo_bus) and all(arm.protocol != 'sim' for arm in rig.arms)


def twin_buses(rig: RigConfig, horns: Mapping[str, Mapping[str, ServoHorn]] | None = None) -> dict[str, SimServoBus]:
    """One factory-fresh emulated bus per arm of a twin rig, each to be linked at the arm's own ``port``.

    ``horns``: {arm: {joint: ServoHorn}}; joints not named have a centred horn counting up.
    """
    if not is_twin(rig):
        raise ConfigError(f'rig {rig.name}: not a twin (needs a sim.servo_bus block and servo-bus arms with ports)')
    out = {}
    for arm in rig.arms:
        if arm.protocol != rig.sim.servo_bus:
            raise ConfigError(f'rig {rig.name}: arm {arm.name} is {arm.protocol}, sim.servo_bus is {rig.sim.servo_bus}')
        out[arm.name] = SimServoBus(arm, arm.protocol, arm.port, horns=(horns or {}).get(arm.name, {}))
    return out
