"""Stall guard and the servos' own position limits, against the byte-level emulator on a pty.

The controller runs on a clock the test advances by one read period per cycle, so the
stall timing is asserted in the controller's own time, never the machine's: the
emulated servos move in real time, and every wait on them polls with a generous
timeout. Assertions read the emulated servos' registers, i.e. what reached the bus.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from bimanual_vla.config import ArmConfig
from bimanual_vla.drivers.servo.arm_controller import ArmController, Reading
from bimanual_vla.drivers.servo.bus import ServoBus, ServoStatusError
from bimanual_vla.drivers.servo.calibration import ArmCalibration, JointCalibration
from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

K = 2 * math.pi / 4096  # rad per tick
PERIOD = 0.01  # controller clock step per cycle (100 Hz)
MARGIN = 0.2  # reply timeout margin: the emulator thread shares two busy cores with other test processes
VENDORS = [('feetech', None), ('dynamixel', 1060), ('dynamixel', 1200)]  # 1060 XL430: load; 1200 XL330: current
VENDOR_IDS = ['feetech', 'dynamixel-xl430-load', 'dynamixel-xl330-current']


@dataclass(frozen=True)
class Joint:
    id: int
    name: str
    lower: float
    upper: float
    direction: int = 1
    zero: float = 2048.0
    homing_offset: int = 0


def efforts(rig: Rig, index: int, last: int = 0) -> list[float]:
    """The joint's efforts in the last ``last`` readings (all if 0), leaving out reads that timed out."""
    return [e for r in rig.readings[-last:] if (e := r.efforts[index]) is not None]


def poll(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class Rig:
    """An emulated bus and an ArmController on it, cycled on the test's clock."""

    def __init__(
        self,
        protocol: str,
        joints: list[Joint],
        *,
        model: int | None = None,
        obstacles: dict[int, int] | None = None,
        gripper: str | None = None,
        speed: float = 20000.0,
        emulator: ServoBusEmulator | None = None,
    ) -> None:
        self.emu = emulator or ServoBusEmulator(
            protocol,
            [j.id for j in joints],
            faults=FaultConfig(obstacles=dict(obstacles or {})),
            max_speed_ticks_per_s=speed,
            model_number=model,
        )
        port = self.emu.start()
        self.joints = joints
        self.arm = ArmConfig(
            name='left',
            protocol=protocol,
            port=port,
            gripper=gripper,
            joints=[{'id': j.id, 'name': j.name, 'lower': j.lower, 'upper': j.upper} for j in joints],
        )
        self.calibration = ArmCalibration(
            arm='left',
            protocol=protocol,
            joints={
                j.name: JointCalibration(
                    id=j.id,
                    homing_offset=j.homing_offset,
                    range_min=0,
                    range_max=4095,
                    direction=j.direction,
                    zero_ticks=j.zero,
                )
                for j in joints
            },
        )
        self.logs: list[tuple[str, str]] = []
        self.controller = ArmController(
            self.arm,
            self.calibration,
            bus_factory=lambda port, protocol, baud: ServoBus(port, protocol, baud, timeout_margin_s=MARGIN),
            log=lambda lvl, msg: self.logs.append((lvl, msg)),
        )
        self.now = 100.0
        self.readings: list[Reading] = []

    def index(self, name: str) -> int:
        return [j.name for j in self.joints].index(name)

    def cycle(self) -> Reading | None:
        self.now += PERIOD
        reading = self.controller.cycle(self.now)
        if reading is not None:
            self.readings.append(reading)
        return reading

    def connect(self) -> None:
        assert self.cycle() is not None and self.controller.connected, self.logs

    def follow(self, name: str, target: float, until: Callable[[], bool], max_cycles: int = 3000) -> bool:
        """Command ``name`` to ``target`` every cycle (as a streaming policy would) until ``until()`` holds."""
        deadline = time.monotonic() + 60.0
        for _ in range(max_cycles):
            self.controller.submit_command([f'left_{name}'], [target], self.now)
            self.cycle()
            if until():
                return True
            if time.monotonic() > deadline:
                break
        return until()

    def close(self) -> None:
        self.controller.close()
        self.emu.stop()


@pytest.fixture
def rigs():
    made: list[Rig] = []

    def make(*args, **kwargs) -> Rig:
        rig = Rig(*args, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


# ----------------------------------------------------------------------------------- emulator


@pytest.mark.parametrize(('protocol', 'model'), VENDORS, ids=VENDOR_IDS)
def test_emulator_load_against_obstacle_and_free(protocol: str, model: int | None) -> None:
    """Present load/current in the vendors' encodings: blocked it grows with the goal error, free it is small."""
    obstacles = {2: 2148, 3: 1998}  # servo 2 blocked from below, servo 3 from above
    with ServoBusEmulator(
        protocol, [1, 2, 3, 4], faults=FaultConfig(obstacles=obstacles), max_speed_ticks_per_s=20, model_number=model
    ) as emu:
        emu.set_present_position(2, 2146)
        emu.set_present_position(3, 2000)
        with ServoBus(emu.port, protocol, timeout_margin_s=MARGIN) as bus:
            t = bus.control_table
            address = 60 if protocol == 'feetech' else 126
            for sid, goal in ((1, 4048), (2, 2198), (3, 1948)):
                bus.write(sid, t.goal_position.address, t.encode(t.goal_position, goal))
                bus.write(sid, t.torque_enable.address, t.encode(t.torque_enable, 1))
            # Free and moving (20 ticks/s toward a goal 2000 ticks away): a small load in the direction it moves.
            free = {'feetech': '1e00', 'dynamixel': '1e00' if model == 1060 else '3400'}[protocol]  # 30 / 52 of 1750
            assert bus.read(1, address, 2).hex() == free
            # Blocked 50 ticks short of the goal: half of full scale, signed as the servo drives.
            assert poll(lambda: emu.servo(2).present_position == 2148 and emu.servo(3).present_position == 1998)
            time.sleep(0.05)
            assert emu.servo(2).present_position == 2148 and emu.servo(3).present_position == 1998  # stays blocked
            up, down = {
                'feetech': ('f401', 'f405'),  # 500 (0.1 %), magnitude with the direction in bit 10
                'dynamixel': ('f401', '0cfe') if model == 1060 else ('6b03', '95fc'),  # +-500 / +-875 of 1750 mA
            }[protocol]
            assert bus.read(2, address, 2).hex() == up
            assert bus.read(3, address, 2).hex() == down
            # Further past the obstacle: saturates at full scale.
            bus.write(2, t.goal_position.address, t.encode(t.goal_position, 2600))
            full = 1000 if protocol == 'feetech' or model == 1060 else 1750
            assert t.decode(t.effort, bus.read(2, address, 2)) == full
            # At rest on its goal: no load. Limp: none either.
            assert bus.read(4, address, 2).hex() == '0000'
            bus.write(2, t.torque_enable.address, t.encode(t.torque_enable, 0))
            assert bus.read(2, address, 2).hex() == '0000'
            # Away from the obstacle it moves again.
            bus.write(3, t.goal_position.address, t.encode(t.goal_position, 2010))
            assert poll(lambda: emu.servo(3).present_position == 2010)


# ---------------------------------------------------------------------------------- stall guard


@pytest.mark.parametrize(('protocol', 'model'), VENDORS, ids=VENDOR_IDS)
def test_joint_pushing_into_obstacle_stops_and_moves_away_again(rigs, protocol: str, model: int | None) -> None:
    joints = [
        Joint(1, 'shoulder_pan', -1.5, 1.5),
        Joint(2, 'elbow_flex', -1.5, 1.5),
        Joint(3, 'wrist_flex', -1.5, 1.5, direction=-1),
    ]
    obstacle = 2348  # elbow_flex at (2348 - 2048) ticks = 0.46 rad
    rig = rigs(protocol, joints, model=model, obstacles={2: obstacle})
    rig.connect()
    elbow = rig.index('elbow_flex')
    stall_s = rig.arm.stall_time_s
    assert (rig.arm.stall_load_fraction, stall_s) == (0.7, 0.3)

    # A policy keeps commanding 1.0 rad (tick 2700), beyond the obstacle.
    assert rig.follow('elbow_flex', 1.0, lambda: rig.controller.stats.stall_events == 1), rig.logs
    stalled_at = rig.now
    pushing = [r.t for r in rig.readings if r.efforts[elbow] is not None and r.efforts[elbow] >= 0.7]
    assert pushing, [r.efforts for r in rig.readings[-40:]]
    # It stopped pushing stall_time_s after the load crossed the threshold (controller clock), within a cycle.
    assert stall_s - 1e-9 <= stalled_at - pushing[0] <= stall_s + 2 * PERIOD
    # The goal read back from the servo is where the obstacle stopped it, not the commanded 2700
    # (a sync write has no reply: wait until the emulator has taken it).
    assert poll(lambda: rig.emu.servo(2).goal_position == obstacle), rig.emu.servo(2).goal_position
    assert rig.emu.servo(2).present_position == obstacle
    assert [lvl for lvl, msg in rig.logs if 'elbow_flex pushed' in msg] == ['warn']

    # The policy keeps commanding into the obstacle: the joint holds, the load stays down, one event only.
    assert not rig.follow('elbow_flex', 1.0, lambda: False, max_cycles=60)
    assert rig.emu.servo(2).goal_position == obstacle
    assert max(abs(e) for e in efforts(rig, elbow, 50)) < 0.05
    assert rig.controller.stats.stall_events == 1 and len([m for _, m in rig.logs if 'pushed' in m]) == 1
    snapshot = rig.controller.snapshot()
    assert snapshot['stalled_joints'] == ['elbow_flex'] and snapshot['stall_events'] == 1
    assert rig.controller.filter.counters['held_at_obstacle'] >= 60

    # Commanded away, it moves away and is released; the other joints were never touched.
    assert rig.follow('elbow_flex', -0.2, lambda: rig.emu.servo(2).present_position == round(2048 - 0.2 / K))
    assert rig.controller.snapshot()['stalled_joints'] == []
    assert rig.emu.servo(1).goal_position == 2048 and rig.emu.servo(3).goal_position == 2048

    # Into the obstacle again: pushes, stops again.
    assert rig.follow('elbow_flex', 1.0, lambda: rig.controller.stats.stall_events == 2)
    assert poll(lambda: rig.emu.servo(2).goal_position == obstacle)


@pytest.mark.parametrize(('protocol', 'model'), VENDORS, ids=VENDOR_IDS)
def test_gripper_closing_on_object_ends_holding(rigs, protocol: str, model: int | None) -> None:
    # A reversed gripper: closed (0 rad) at tick 2500, opening lowers the ticks. The object stops it at 0.4 rad.
    joints = [Joint(1, 'wrist_roll', -2.0, 2.0), Joint(6, 'gripper', -0.1, 1.5, direction=-1, zero=2500.0)]
    grip_object = 2239  # round(2500 - 0.4 / K)
    rig = rigs(protocol, joints, model=model, obstacles={6: grip_object}, gripper='gripper')
    rig.connect()
    g = rig.index('gripper')
    assert rig.readings[-1].positions[g] == pytest.approx((2500 - 2048) * K)  # starts open, 0.69 rad

    assert rig.follow('gripper', 0.0, lambda: rig.controller.stats.stall_events == 1), rig.logs
    # While it squeezed, the effort said "closing" (toward smaller angles) in the joint's own direction.
    assert min(efforts(rig, g)) <= -0.7
    # Holding the object where it met it, gently: goal on the object, no drive against it.
    assert not rig.follow('gripper', 0.0, lambda: False, max_cycles=60)
    assert rig.emu.servo(6).goal_position == grip_object == rig.emu.servo(6).present_position
    assert max(abs(e) for e in efforts(rig, g, 50)) < 0.05
    assert rig.readings[-1].positions[g] == pytest.approx(-(grip_object - 2500) * K)
    assert rig.controller.stats.stall_events == 1
    # Opening releases it.
    assert rig.follow('gripper', 1.0, lambda: rig.emu.servo(6).present_position == round(2500 - 1.0 / K))
    assert rig.controller.snapshot()['stalled_joints'] == []


# ------------------------------------------------------------------------------ position limits

LIMIT_JOINTS = [
    Joint(1, 'shoulder_pan', -1.0, 1.5),
    Joint(2, 'wrist_roll', -1.0, 1.5, direction=-1, zero=2000.0, homing_offset=300),  # reversed, offset
]
# (min, max) ticks: shoulder_pan round(2048 -+ 1.0|1.5 / K); wrist_roll reversed, upper limit at the low end.
LIMIT_TICKS = {1: (1396, 3026), 2: (1022, 2652)}


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_connect_writes_position_limits_the_servo_then_enforces(rigs, protocol: str) -> None:
    rig = rigs(protocol, LIMIT_JOINTS)
    rig.connect()
    # The registers hold the joint limits in calibrated (post-offset) ticks, little endian.
    if protocol == 'feetech':  # Min_Position_Limit at 9, Max at 11, 2 bytes each
        assert rig.emu.servo(1).read_bytes(9, 4).hex() == '7405d20b'
        assert rig.emu.servo(2).read_bytes(9, 4).hex() == 'fe035c0a'
        assert rig.emu.servo(2).read_register('lock') == 1  # EEPROM locked again after the write
    else:  # Max_Position_Limit at 48, Min at 52, 4 bytes each
        assert rig.emu.servo(1).read_bytes(48, 8).hex() == 'd20b0000' + '74050000'
        assert rig.emu.servo(2).read_bytes(48, 8).hex() == '5c0a0000' + 'fe030000'
    for sid, (low, high) in LIMIT_TICKS.items():
        servo = rig.emu.servo(sid)
        assert (servo.read_register('min_position_limit'), servo.read_register('max_position_limit')) == (low, high)
        assert servo.torque_enabled  # back on after the EEPROM writes
    assert rig.emu.servo(2).read_register('homing_offset') == 300
    assert rig.controller.stats.position_limits_written == 2
    assert sum('position limits are [0, 4095]' in m for _, m in rig.logs) == 2

    # A second connect finds them right and writes nothing.
    rig.controller.close()
    again = rigs(protocol, LIMIT_JOINTS, emulator=rig.emu)
    again.connect()
    assert again.controller.stats.position_limits_written == 0
    again.controller.close()

    # A runaway host, straight on the bus: goals outside the range never move the servo past its limit.
    with ServoBus(rig.emu.port, protocol, timeout_margin_s=MARGIN) as bus:
        t = bus.control_table
        servo = rig.emu.servo(1)
        start = servo.present_position
        if protocol == 'feetech':  # the STS limits the goal to the range: it runs to the limit and stops
            bus.write(1, t.goal_position.address, t.encode(t.goal_position, 3900))
            assert servo.goal_position == 3026
            assert poll(lambda: servo.present_position == 3026)
            bus.sync_write(t.goal_position.address, {1: t.encode(t.goal_position, 200)})
            assert poll(lambda: servo.present_position == 1396)
            assert servo.goal_position == 1396
        else:  # a Dynamixel X refuses it (Data Limit Error) and keeps its goal
            with pytest.raises(ServoStatusError, match='data limit error'):
                bus.write(1, t.goal_position.address, t.encode(t.goal_position, 3900))
            bus.sync_write(t.goal_position.address, {1: t.encode(t.goal_position, 200)})
            bus.ping(1)  # a round trip after the sync write: it has been handled
            assert servo.goal_position == start
            time.sleep(0.05)
            assert servo.present_position == start
            bus.write(1, t.goal_position.address, t.encode(t.goal_position, 3026))  # the limit itself is allowed
            assert poll(lambda: servo.present_position == 3026)


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_servo_missing_at_connect_gets_its_limits_when_it_answers(rigs, protocol: str) -> None:
    rig = rigs(protocol, LIMIT_JOINTS)
    rig.emu.faults.missing_ids = {2}
    rig.connect()

    def limits(sid: int) -> tuple[int, int]:
        servo = rig.emu.servo(sid)
        return servo.read_register('min_position_limit'), servo.read_register('max_position_limit')

    assert limits(1) == LIMIT_TICKS[1] and limits(2) == (0, 4095)
    rig.emu.faults.missing_ids = set()
    for _ in range(500):
        rig.cycle()
        if limits(2) == LIMIT_TICKS[2] and rig.emu.servo(2).torque_enabled:
            break
    assert limits(2) == LIMIT_TICKS[2] and rig.emu.servo(2).torque_enabled  # torque back on after the EEPROM write
    assert rig.controller.stats.position_limits_written == 2


def test_position_limit_ticks_follow_direction_and_range() -> None:
    cal = ArmCalibration(
        joints={
            'a': JointCalibration(id=1, homing_offset=0, range_min=1000, range_max=3000, direction=1, zero_ticks=2048),
            'b': JointCalibration(id=2, homing_offset=0, range_min=1000, range_max=3000, direction=-1, zero_ticks=2048),
        }
    )
    assert cal.position_limit_ticks('a', -0.5, 1.0) == (round(2048 - 0.5 / K), round(2048 + 1.0 / K))
    assert cal.position_limit_ticks('b', -0.5, 1.0) == (round(2048 - 1.0 / K), round(2048 + 0.5 / K))
    assert cal.position_limit_ticks('a', -3.0, 3.0) == (1000, 3000)  # inside the calibrated range


def test_stall_guard_counts_only_a_push_that_gets_nowhere() -> None:
    from bimanual_vla.drivers.servo.stall_guard import StallGuard

    def run(samples: list[tuple[float | None, float | None, float]]) -> list[float]:
        """(position, effort, goal) every 10 ms; the times at which the guard fired."""
        guard = StallGuard(1, load_fraction=0.7, time_s=0.3)
        return [round(k * 0.01, 3) for k, (p, e, g) in enumerate(samples) if guard.update(k * 0.01, [p], [e], [g])]

    blocked = [(0.5, 0.9, 1.0)] * 40
    assert run(blocked) == [0.3]  # 0.3 s after the push began, once
    assert run([(0.5, -0.9, 0.0)] * 40) == [0.3]  # the other direction
    assert run([(0.5, 0.9, 0.5)] * 40) == []  # high load with the goal reached: holding (gravity), not pushing
    assert run([(0.5, -0.9, 1.0)] * 40) == []  # load against the goal's direction: something pushes it back
    assert run([(0.5, 0.5, 1.0)] * 40) == []  # below the threshold
    assert run([(0.5 + 0.01 * k, 0.9, 2.0) for k in range(40)]) == []  # slow but moving under high load
    gaps = [(None, None, 1.0) if k % 3 else (0.5, 0.9, 1.0) for k in range(40)]
    assert run(gaps) == [0.3]  # missed reads neither restart nor stop the clock
    dip = [(0.5, 0.9 if k != 20 else 0.3, 1.0) for k in range(60)]
    assert run(dip) == [0.51]  # the load dropping restarts it
