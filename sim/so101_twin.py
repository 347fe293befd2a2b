"""The SO-101 twin without ROS: physics behind emulated STS3215 buses, and a hand to move limp joints.

``sim_rig`` (sim/node.py) is how the twin runs on a ROS graph. This is the same loop in one plain
thread, for what needs no graph: scripting ``bimanual-vla calibrate`` against the twin (the hand
holds the arm in the zero pose, sweeps every joint through its range, closes the gripper, as a
person does with a real arm whose torque is off), byte-level tests of the real driver library
against it, and the bench. Each control period: goals written over the buses become joint targets,
a joint whose servo has torque off goes limp (its target follows it) unless the hand holds it,
physics steps, and the servos' present position and load registers are refreshed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np

from bimanual_vla.config import RigConfig
from bimanual_vla.sim.servo_bus import ServoHorn, SimServoBus, twin_buses
from bimanual_vla.sim.so101_scene import So101Scene, mujoco


class TwinLoop:
    """Physics of the twin stepped in real time on a thread, its arms on emulated buses at the rig's ports."""

    def __init__(
        self,
        rig: RigConfig,
        *,
        task: str | None = None,
        seed: int | None = None,
        horns: Mapping[str, Mapping[str, ServoHorn]] | None = None,
    ) -> None:
        self.scene = So101Scene(rig, task=task, seed=seed)
        self.buses: dict[str, SimServoBus] = twin_buses(rig, horns)
        self.lock = threading.Lock()
        self._hand: dict[str, dict[str, float]] = {}  # arm -> joint -> value the hand holds it at
        self._running = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    def start(self) -> TwinLoop:
        for arm, bus in self.buses.items():
            bus.start(self.scene.joint_positions(arm))
        self._running = True
        self._thread = threading.Thread(target=self._run, name='so101_twin', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5.0)
        for bus in self.buses.values():
            bus.stop()

    def __enter__(self) -> TwinLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the hand

    def hold(self, arm: str, joints: Mapping[str, float]) -> None:
        """The hand puts these joints at these values and keeps them there (until :meth:`release`)."""
        with self.lock:
            self._hand.setdefault(arm, {}).update({k: float(v) for k, v in joints.items()})

    def release(self, arm: str | None = None) -> None:
        with self.lock:
            if arm is None:
                self._hand.clear()
            else:
                self._hand.pop(arm, None)

    def sweep(self, arm: str, joint: str, low: float, high: float, duration_s: float, dwell_s: float = 0.25) -> None:
        """The hand moves one joint to ``low``, to ``high`` and back to where it was, taking ``duration_s``,
        and rests ``dwell_s`` at each end stop (as a person does, so a reader sampling the bus sees it)."""
        with self.lock:
            start = float(self.scene.joint_positions(arm)[self.scene.arms[arm].config.joint_names.index(joint)])
        for a, b, n in ((start, low, 20), (low, high, 40), (high, start, 20)):
            for value in np.linspace(a, b, n):
                self.hold(arm, {joint: float(value)})
                time.sleep(duration_s / 80)
            if b != start:
                time.sleep(dwell_s)

    # ------------------------------------------------------------------ physics

    def positions(self, arm: str) -> np.ndarray:
        with self.lock:
            return self.scene.joint_positions(arm)

    def _run(self) -> None:
        dt = self.scene.control_dt
        next_tick = time.monotonic()
        while self._running:
            with self.lock:
                self._tick()
                states = {a: (self.scene.joint_positions(a), self.scene.joint_efforts(a)) for a in self.buses}
            for arm, bus in self.buses.items():
                bus.publish_positions(states[arm][0])
                bus.publish_loads(So101Scene.load_fractions(states[arm][1]))
            next_tick += dt
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.25:
                next_tick = time.monotonic()

    def _tick(self) -> None:
        scene = self.scene
        for arm, bus in self.buses.items():
            bus.update()
            goals = bus.take_goals()
            names = scene.arms[arm].config.joint_names
            current = scene.joint_positions(arm)
            goals.update({n: float(current[names.index(n)]) for n in bus.torque_off()})  # limp
            goals.update(self._hand.get(arm, {}))
            if goals:
                scene.command(arm, goals)
        self._apply_hand()
        scene.step()
        self._apply_hand()  # a hand is stronger than gravity and a limp servo: the joints are where it puts them
        self.steps += 1

    def _apply_hand(self) -> None:
        scene, d = self.scene, self.scene.data
        if not any(self._hand.values()):
            return
        for arm, held in self._hand.items():
            amap = scene.arms[arm]
            names = amap.config.joint_names
            for name, value in held.items():
                i = names.index(name)
                d.qpos[amap.qpos_adr[i]] = value
                d.qvel[amap.dof_adr[i]] = 0.0
                d.ctrl[amap.ctrl_idx[i]] = value
        mujoco.mj_forward(scene.model, d)
