"""The policy node's test harness: a synthetic rig around a PolicyNode, the policy file and the
checkpoint it runs, and the model tests' inputs.

``PolicyHarness`` spins a ``SyntheticRig`` (cameras at 15 Hz, joint_states at 50 Hz, recorders for
everything the node sends) and the policy nodes it starts on their own executor threads; the
``policy_harness`` and ``node_checkpoint`` fixtures in test/conftest.py are built on it. Shared by
test/policy_node/ and test/test_qos_inputs.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from bimanual_vla import topics
from bimanual_vla.config import load_rig

RIG = 'aloha_sim'
CAMERAS = ['top', 'left_wrist', 'right_wrist']
MAX_VEL = 2.0
RATE = 50.0
MAX_STEP = MAX_VEL / RATE
CHUNK_SIZE = 100  # 2 s chunks: a loaded 2-core CI machine can take ~1 s per inference


def make_node_checkpoint(out: Path) -> Path:
    """A tiny random checkpoint for RIG with CHUNK_SIZE-step chunks, made by ``bimanual-vla
    make-checkpoint --tiny`` in process (sharing torch's import)."""
    from bimanual_vla.cli.main import main

    assert main(['make-checkpoint', '--tiny', str(out), '--rig', RIG, '--chunk-size', str(CHUNK_SIZE)]) == 0
    return out


def remote_rig_file(directory: Path, policy_host: object = '10.77.0.2') -> Path:
    """``directory/aloha_split.yaml``: aloha_sim with its policy on ``policy_host`` (the rig file of a policy
    on another computer; the URDF path made absolute, since the file moves). Any value is written as given,
    so a test can also write a bad one."""
    from bimanual_vla.config import resolve_rig_path, resolve_share_relative

    data = yaml.safe_load(resolve_rig_path('aloha_sim').read_text())
    data['urdf'] = str(resolve_share_relative(data['urdf']))
    data['policy_host'] = policy_host
    path = directory / 'aloha_split.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def write_policy(tmp_path: Path, checkpoint: Path, **overrides) -> Path:
    """``tmp_path/policy.yaml`` for ``checkpoint``: 5 flow steps, RTC, one torch thread, disabled at
    start; each override replaces a top-level value or updates a section (a dict)."""
    cfg = {
        'checkpoint': str(checkpoint),
        'task': 'transfer the cube to the left arm',
        'reasoning': {'enabled': True, 'every_n_chunks': 1, 'max_tokens': 6},
        'inference': {'num_steps': 5, 'execution_horizon': 25, 'chunking': 'rtc', 'torch_threads': 1},
        'staleness': {'camera_max_age_s': 0.5, 'joint_max_age_s': 0.3},
        'safety': {'max_velocity_rad_s': MAX_VEL, 'enabled_at_start': False},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = tmp_path / 'policy.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(predicate, timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms (the nodes spin on threads of their own) for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class SyntheticRig:
    """Synthetic cameras (15 Hz) and joint_states (50 Hz), and recorders for everything the node sends."""

    def __init__(self, context) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory
        from visualization_msgs.msg import MarkerArray

        self.node = Node('synthetic_rig', context=context)
        self.rig = load_rig(RIG)
        self.joint_names = self.rig.all_joint_names()
        self.position = np.array([(j.lower + j.upper) / 2 for a in self.rig.arms for j in a.joints])
        self.cameras_on = set(CAMERAS)
        self.camera_delay_s = 0.0  # frames stamped this long before they are published (capture + transport)
        self.ramp_rad_s = 0.0  # the first joint moves at this speed from the first joint state on
        self._ramp_t0: float | None = None
        self.image_stamps: list[float] = []
        self.lock = threading.Lock()
        self.commands: dict[str, list] = {a.name: [] for a in self.rig.arms}
        self.reasoning: list[str] = []
        self.chunks: list = []
        self.markers: list = []
        self.diagnostics: list = []
        self._img_pubs = {
            c: self.node.create_publisher(Image, topics.camera_image(c), topics.SENSOR_QOS) for c in CAMERAS
        }
        self._js_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
        self.task_pub = self.node.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
        self.subtask_pub = self.node.create_publisher(String, topics.POLICY_SUBTASK, topics.RELIABLE_QOS)
        deep = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)

        def keep(store):
            def cb(msg):
                with self.lock:
                    store.append((time.monotonic(), msg))

            return cb

        for arm in self.commands:
            self.node.create_subscription(JointState, topics.arm_command(arm), keep(self.commands[arm]), deep)
        self.node.create_subscription(String, topics.POLICY_REASONING, keep(self.reasoning), topics.LATCHED_QOS)
        self.node.create_subscription(JointTrajectory, topics.POLICY_ACTION_CHUNK, keep(self.chunks), deep)
        self.node.create_subscription(MarkerArray, topics.POLICY_MARKERS, keep(self.markers), deep)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, keep(self.diagnostics), deep)
        rng = np.random.default_rng(0)
        self._frames = {c: rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8) for c in CAMERAS}
        self.node.create_timer(1 / 15, self._publish_images)
        self.node.create_timer(1 / 50, self._publish_joints)

    def _publish_images(self) -> None:
        from rclpy.duration import Duration
        from sensor_msgs.msg import Image

        now = self.node.get_clock().now() - Duration(nanoseconds=int(self.camera_delay_s * 1e9))
        stamp = now.to_msg()
        with self.lock:
            self.image_stamps.append(now.nanoseconds * 1e-9)
        for cam in CAMERAS:
            if cam not in self.cameras_on:
                continue
            frame = self._frames[cam]
            msg = Image(height=48, width=64, encoding='rgb8', step=64 * 3, data=frame.tobytes())
            msg.header.stamp = stamp
            msg.header.frame_id = topics.camera_frame(cam)
            self._img_pubs[cam].publish(msg)

    def _publish_joints(self) -> None:
        from sensor_msgs.msg import JointState

        now = self.node.get_clock().now()
        t = now.nanoseconds * 1e-9
        self._ramp_t0 = t if self._ramp_t0 is None else self._ramp_t0
        msg = JointState(name=self.joint_names, position=[float(v) for v in self.position_at(t)])
        msg.header.stamp = now.to_msg()
        self._js_pub.publish(msg)

    def position_at(self, t: float) -> np.ndarray:
        position = self.position.copy()
        position[0] += self.ramp_rad_s * (t - (self._ramp_t0 if self._ramp_t0 is not None else t))
        return position

    def count(self, store) -> int:
        with self.lock:
            return len(store)

    def snapshot(self, store) -> list:
        with self.lock:
            return list(store)


class PolicyHarness:
    """Spins the synthetic rig and any policy node started on it on their own executor threads.

    A context manager: leaving it stops the threads and destroys every node.
    """

    def __init__(self, context) -> None:
        from bimanual_vla.bringup.executors import NodeThreads

        self.context = context
        self.executor = NodeThreads(context=context)
        self.rig = SyntheticRig(context)
        self.executor.add_node(self.rig.node)
        self.nodes: list = []
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)

    def start(self, policy: Path, **params):
        """A PolicyNode on RIG with the policy file ``policy`` and parameter overrides ``params``, spinning."""
        from rclpy.parameter import Parameter

        from bimanual_vla.policy_node.node import PolicyNode

        overrides = [Parameter('rig', value=RIG), Parameter('policy', value=str(policy))]
        overrides += [Parameter(k, value=v) for k, v in params.items()]
        node = PolicyNode(context=self.context, parameter_overrides=overrides)
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def __enter__(self) -> PolicyHarness:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.executor.shutdown(timeout_sec=5)
        self._thread.join(timeout=10)
        for node in self.nodes:
            node.destroy_node()
        self.rig.node.destroy_node()


# ------------------------------------------------------------------ model tests


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def make_observation(policy, seed: int = 0, size: tuple[int, int] = (240, 320), task: str | None = None):
    """Random camera frames and a state inside the checkpoint's normalisation range."""
    from bimanual_vla.policy_node.model import Observation

    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in policy.camera_names}
    mean = np.asarray(policy.metadata.normalization.state.mean)
    std = np.asarray(policy.metadata.normalization.state.std)
    state = mean + 0.5 * std * rng.standard_normal(mean.shape)
    return Observation(images=images, state=state, task=task or 'transfer the cube to the left arm', stamp=12.5)


def make_noise(policy, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((policy.chunk_size, policy.config.max_action_dim))
