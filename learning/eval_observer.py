"""eval-sim's observer: a node that watches the graph as a person would (sim clock, subtasks, success, commands).

It also drives each episode's switches: the task, the sim's reset and the policy's enable service.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String
from std_srvs.srv import SetBool
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.config import RigConfig
from bimanual_vla.learning.episode_video import EpisodeRecorder
from bimanual_vla.ros_utils import stamp_to_sec


def normalise_text(text: str) -> str:
    return ' '.join(text.lower().replace('[coach]', '').split())


class EvalObserver(Node):
    """Watches the graph: sim clock, the policy's subtasks, success, commands and (for video) cameras."""

    def __init__(self, rig: RigConfig, **kwargs: Any) -> None:
        super().__init__('eval_observer', **kwargs)
        self.rig = rig
        self._lock = threading.Lock()
        self.sim_time = -1.0
        self.reset_seen = threading.Event()
        self._await_reset = False
        self.frame_after_reset = threading.Event()
        self.success = False
        self.reasoning = ''
        self.expert_labels: list[str] = []
        self.joint_names = [f'{a.name}_{j.name}' for a in rig.arms for j in a.joints]
        self._q = np.full(len(self.joint_names), np.nan)
        self.dt = 1.0 / rig.control_rate_hz
        # (sim time, policy subtask, expert label at that time, measured joints in joint_names order)
        self.tick_log: list[tuple[float, str, str, np.ndarray]] = []
        # (observation stamp, sim time its marker arrived, policy subtask, expert label at the stamp)
        self.inference_log: list[tuple[float, float, str, str]] = []
        # (observation stamp, sim time its new subtask arrived on policy/reasoning), for each inference that
        # changed the text; the node publishes it before the chunk and its markers
        self.subtask_changes: list[tuple[float, float]] = []
        self._reasoning_at = 0.0
        self._last_marker_text = ''
        # a new subtask whose marker came before its policy/reasoning message (observation stamp, text):
        # the two are separate topics, and under load DDS may deliver them in either order
        self._marker_ahead: tuple[float, str] | None = None
        self.recording = False
        self.video = False
        self.recorder = EpisodeRecorder(height=240)
        self._images: dict[str, np.ndarray] = {}
        self._next_video_t = 0.0
        self.video_fps = 10.0
        self.command_count = 0
        self.command_violations: list[str] = []
        self._limits = {f'{a.name}_{j.name}': (j.lower, j.upper) for a in rig.arms for j in a.joints}  # qualified names
        self.create_subscription(Clock, topics.CLOCK, self._on_clock, topics.CLOCK_QOS)
        self.create_subscription(String, topics.POLICY_REASONING, self._on_reasoning, topics.LATCHED_QOS)
        self.create_subscription(MarkerArray, topics.POLICY_MARKERS, self._on_markers, topics.RELIABLE_QOS)
        self.create_subscription(Bool, topics.SIM_SUCCESS, self._on_success, topics.LATCHED_QOS)
        self._col = {n: i for i, n in enumerate(self.joint_names)}
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        for arm in rig.arms:
            self.create_subscription(JointState, topics.arm_command(arm.name), self._on_command, topics.COMMAND_QOS)
        for cam in rig.cameras:
            self.create_subscription(
                Image, topics.camera_image(cam.name), lambda m, c=cam.name: self._on_image(c, m), topics.SENSOR_QOS
            )
        self.task_pub = self.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
        self.coach_pub = self.create_publisher(String, topics.POLICY_SUBTASK, topics.LATCHED_QOS)
        self.perturb_pub = self.create_publisher(String, topics.SIM_PERTURB, topics.RELIABLE_QOS)
        self.reset_pub = self.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
        self.enable_client = self.create_client(SetBool, topics.POLICY_ENABLE)

    # ------------------------------------------------------------------ callbacks

    def expert_label(self, t: float) -> str:
        if not self.expert_labels:
            return ''
        k = min(max(int(round(t / self.dt)) - 1, 0), len(self.expert_labels) - 1)
        return self.expert_labels[k]

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            for name, value in zip(msg.name, msg.position, strict=False):
                if name in self._col:
                    self._q[self._col[name]] = value

    def _on_clock(self, msg: Clock) -> None:
        now = stamp_to_sec(msg.clock)
        with self._lock:
            previous, self.sim_time = self.sim_time, now
            if self._await_reset and now < previous:
                self._await_reset = False
                self.success = False
                self.tick_log = []
                self.inference_log = []
                self.subtask_changes = []
                self._last_marker_text = ''
                self._marker_ahead = None
                self.reset_seen.set()
                return
            if self.recording:
                self.tick_log.append((now, self.reasoning, self.expert_label(now), self._q.copy()))

    def _on_reasoning(self, msg: String) -> None:
        with self._lock:
            self.reasoning = msg.data
            self._reasoning_at = self.sim_time
            ahead, self._marker_ahead = self._marker_ahead, None
            if ahead is not None and ahead[1] == msg.data and self.recording:
                self.subtask_changes.append((ahead[0], self._reasoning_at))

    def _on_markers(self, msg: MarkerArray) -> None:
        for marker in msg.markers:
            if marker.ns == 'reasoning' and marker.text:
                t = stamp_to_sec(marker.header.stamp)
                with self._lock:
                    if self.recording:
                        self.inference_log.append((t, self.sim_time, marker.text, self.expert_label(t)))
                        changed, self._last_marker_text = marker.text != self._last_marker_text, marker.text
                        if changed and self.reasoning == marker.text and self._reasoning_at >= t - 1e-9:
                            self.subtask_changes.append((t, self._reasoning_at))
                        elif changed:  # its text has not arrived yet: timed when it does (_on_reasoning)
                            self._marker_ahead = (t, marker.text)

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            self.success = bool(msg.data)

    def _on_command(self, msg: JointState) -> None:
        self.command_count += 1
        for name, value in zip(msg.name, msg.position, strict=False):
            lo, hi = self._limits.get(name, (-math.inf, math.inf))
            if not math.isfinite(value) or value < lo - 1e-9 or value > hi + 1e-9:
                if len(self.command_violations) < 20:
                    self.command_violations.append(f'{name}={value}')

    def _on_image(self, camera: str, msg: Image) -> None:
        t = stamp_to_sec(msg.header.stamp)
        if self.reset_seen.is_set() and t <= self.sim_time + 1e-6:
            self.frame_after_reset.set()  # a frame of the new episode (not one rendered before the reset)
        if not (self.recording and self.video) or msg.encoding != 'rgb8':
            return
        image = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        with self._lock:
            self._images[camera] = image
            if len(self._images) == len(self.rig.cameras) and t >= self._next_video_t:
                self._next_video_t = t + 1.0 / self.video_fps
                lines = [
                    f'policy: {self.reasoning or "-"}',
                    f'expert: {self.expert_label(t)}',
                    f't = {t:5.2f} s   success: {"yes" if self.success else "not yet"}',
                ]
                self.recorder.add(dict(self._images), lines)

    # ------------------------------------------------------------------ episode control

    def expect_reset(self) -> None:
        with self._lock:
            self._await_reset = True
            self.reset_seen.clear()
            self.frame_after_reset.clear()

    def start_recording(self, video: bool) -> None:
        with self._lock:
            self.recording = True
            self.video = video
            self._images = {}
            self._next_video_t = 0.0

    def stop_recording(self) -> None:
        with self._lock:
            self.recording = False


def call_enable(client: Any, value: bool, timeout_s: float = 10.0) -> None:
    """Call policy/enable through `client` (a SetBool client whose node another thread spins); RuntimeError
    if the service is not there or does not answer within `timeout_s` each, or refuses to enable."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise RuntimeError('policy/enable service not available')
    future = client.call_async(SetBool.Request(data=value))
    deadline = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > deadline:
            raise RuntimeError(f'policy/enable({value}) did not answer within {timeout_s} s')
        time.sleep(0.01)
    if value and not future.result().success:
        raise RuntimeError(f'policy/enable refused: {future.result().message}')
