"""An arm_driver node on an emulated Feetech bus, with a peer node that commands it and records what it says.

Shared by the arm driver's tests (test/drivers/servo/test_arm_node.py) and the e-stop QoS test
(test/test_qos_inputs.py): ``ArmHarness(tmp_path, ros_context, spin).start()``, ``close()`` after.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bimanual_vla import topics

K = 2 * math.pi / 4096  # rad per tick
IDS = [1, 2, 3, 4, 5, 6]
NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
QUALIFIED = [f'left_{n}' for n in NAMES]
LIMITS = {'shoulder_pan': 1.0, 'elbow_flex': 1.5}  # symmetric limits; others 1.7


def ticks(rad: float, direction: int = 1) -> int:
    return round(2048 + direction * rad / K)


class ArmHarness:
    """Emulator + rig + arm_driver node + a test node with publishers, subscribers and a torque client."""

    def __init__(
        self,
        tmp_path: Path,
        context,
        spin,
        *,
        estop_action: str = 'hold',
        allow_missing: bool = False,
        faults=None,
        params: dict | None = None,
        calibration: dict | None = None,
    ) -> None:
        from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

        self.tmp_path, self.context, self._spin = tmp_path, context, spin
        self.emu = ServoBusEmulator('feetech', IDS, faults=faults or FaultConfig(), max_speed_ticks_per_s=4000)
        self.goals: list[tuple[int, int]] = []
        self.emu.on_goal = lambda sid, t: self.goals.append((sid, t))
        self.link = tmp_path / 'ttyARM0'
        os.symlink(self.emu.start(), self.link)
        joints = [
            {'id': i, 'name': n, 'lower': -LIMITS.get(n, 1.7), 'upper': LIMITS.get(n, 1.7)}
            for i, n in zip(IDS, NAMES, strict=True)
        ]
        cal_path = tmp_path / 'left.json'
        if calibration is None:
            calibration = self.default_calibration()
        if calibration:  # {} = no file at the configured path
            cal_path.write_text(json.dumps(calibration))
        arm = {
            'name': 'left',
            'protocol': 'feetech',
            'port': str(self.link),
            'calibration': str(cal_path),
            'joints': joints,
            'gripper': 'gripper',
            'allow_missing_servos': allow_missing,
            'read_rate_hz': 100,
        }
        self.rig = tmp_path / 'rig.yaml'
        self.rig.write_text(
            yaml.safe_dump({'name': 'test_rig', 'urdf': 'urdf/none.urdf', 'estop_action': estop_action, 'arms': [arm]})
        )
        self.params = params or {}

    @staticmethod
    def default_calibration() -> dict:
        # wrist_flex is mounted reversed: its angle grows as its ticks fall.
        return {
            'format': 'bimanual_vla.calibration',
            'version': 1,
            'arm': 'left',
            'protocol': 'feetech',
            'joints': {
                n: {
                    'id': i,
                    'homing_offset': 0,
                    'range_min': 0,
                    'range_max': 4095,
                    'direction': -1 if n == 'wrist_flex' else 1,
                    'zero_ticks': 2048,
                }
                for i, n in zip(IDS, NAMES, strict=True)
            },
        }

    def start(self) -> ArmHarness:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import SetBool

        from bimanual_vla.drivers.servo.node import ArmDriver

        overrides = [Parameter('rig', value=str(self.rig)), Parameter('arm', value='left')]
        overrides += [Parameter(k, value=v) for k, v in self.params.items()]
        self.node = ArmDriver(context=self.context, parameter_overrides=overrides)
        self.peer = Node('arm_test_peer', context=self.context)
        self.states: list[JointState] = []
        self.diags: list = []
        self.peer.create_subscription(JointState, topics.JOINT_STATES, self.states.append, topics.SENSOR_QOS)
        self.peer.create_subscription(
            DiagnosticArray,
            topics.DIAGNOSTICS,
            lambda m: self.diags.extend(s for s in m.status if 'arm left' in s.name),
            topics.DIAGNOSTICS_QOS,
        )
        self.cmd_pub = self.peer.create_publisher(JointState, topics.arm_command('left'), topics.COMMAND_QOS)
        self.estop_pub = self.peer.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
        self.torque = self.peer.create_client(SetBool, topics.arm_torque('left'))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        assert self.spin(lambda: self.cmd_pub.get_subscription_count() == 1, 15), 'command subscription not matched'
        assert self.spin(lambda: len(self.states) > 5, 15), 'no joint_states from the driver'
        return self

    def spin(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        return self._spin(self.executor, predicate, timeout)

    def command(self, names: list[str], positions: list[float]) -> None:
        from sensor_msgs.msg import JointState

        self.cmd_pub.publish(JointState(name=names, position=positions))

    def command_until(self, names, positions, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Stream a command at ~20 Hz (as a policy would) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.command(names, positions)
            if self.spin(predicate, 0.05):
                return True
        return predicate()

    def estop(self, active: bool) -> None:
        from std_msgs.msg import Bool

        self.estop_pub.publish(Bool(data=active))

    def call_torque(self, on: bool):
        from std_srvs.srv import SetBool

        assert self.spin(lambda: self.torque.service_is_ready(), 10), 'torque service not available'
        future = self.torque.call_async(SetBool.Request(data=on))
        assert self.spin(future.done, 10), 'torque service did not answer'
        return future.result()

    def latest(self) -> dict[str, float]:
        return dict(zip(self.states[-1].name, self.states[-1].position, strict=True)) if self.states else {}

    def diag(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diags[-1].values} if self.diags else {}

    def fresh_diag(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 10.0) -> dict[str, str]:
        self.diags.clear()
        assert self.spin(lambda: bool(self.diags) and predicate(self.diag()), timeout), f'diagnostics: {self.diag()}'
        return self.diag()

    def servo(self, sid: int):
        return self.emu.servo(sid)

    def close(self) -> None:
        if hasattr(self, 'executor'):
            self.executor.shutdown()
            self.node.destroy_node()
            self.peer.destroy_node()
        self.emu.stop()
