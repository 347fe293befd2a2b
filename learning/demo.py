"""`make demo`: one episode of the simulated rig, headless, written out for a person to look at.

The rig runs exactly as `bimanual-vla run --rig <rig>` brings it up (bimanual_vla.bringup.nodes):
the ALOHA sim (`aloha_sim`) or the SO-101 twin (`so101_sim`, behind its real arm drivers), driven
either by the policy node with a checkpoint for the rig (the one shipped for it, or `--checkpoint`)
or by the sim's scripted expert: `auto` takes the expert where the rig's checkpoint learned another
task, and refuses (one line saying how to make one) where no checkpoint for the rig exists. An
observer node subscribes to the same topics rviz would (cameras, the subtask text, `sim/success`)
and writes `episode.mp4`, `contact_sheet.png` (cameras side by side, the current subtask drawn on)
and `result.json`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, RigConfig, load_policy, load_rig, resolve_share_relative
from bimanual_vla.image_msgs import ImageError, image_to_rgb
from bimanual_vla.learning.episode_video import EpisodeRecorder
from bimanual_vla.learning.tasks import TASK_TEXT, task_for_rig


@dataclass
class DemoResult:
    driver: str
    task: str
    seed: int
    success: bool = False
    sim_time_s: float = 0.0
    wall_time_s: float = 0.0
    frames: int = 0
    subtasks: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


class DemoObserver(Node):
    """Collects what the episode looks like from the rig's topics, in sim time."""

    def __init__(self, rig: RigConfig, subtask_topic: str, video_fps: float, **kwargs) -> None:
        super().__init__('demo_observer', **kwargs)
        self._lock = threading.Lock()
        self._images: dict[str, np.ndarray] = {}
        self.cameras = [c.name for c in rig.cameras]
        self.subtask = ''
        self.subtasks: list[str] = []
        self.success = False
        self.success_since: float | None = None
        self.recorder = EpisodeRecorder(height=240)
        for cam in self.cameras:
            self.create_subscription(
                Image, topics.camera_image(cam), lambda msg, c=cam: self._on_image(c, msg), topics.SENSOR_QOS
            )
        self.create_subscription(String, subtask_topic, self._on_subtask, topics.LATCHED_QOS)
        self.create_subscription(Bool, topics.SIM_SUCCESS, self._on_success, topics.LATCHED_QOS)
        self.create_timer(1.0 / video_fps, self._add_frame)

    def sim_time(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = image_to_rgb(msg)
        except ImageError:
            return
        with self._lock:
            self._images[camera] = image

    def _on_subtask(self, msg: String) -> None:
        with self._lock:
            self.subtask = msg.data
            if msg.data and (not self.subtasks or self.subtasks[-1] != msg.data):
                self.subtasks.append(msg.data)

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            if msg.data and not self.success:
                self.success_since = self.sim_time()
            self.success = self.success or msg.data

    def _add_frame(self) -> None:
        with self._lock:
            if set(self._images) != set(self.cameras):
                return
            images = {c: self._images[c] for c in self.cameras}
            lines = [
                f'subtask: {self.subtask or "-"}',
                f't = {self.sim_time():5.2f} s   success: {"yes" if self.success else "not yet"}',
            ]
        self.recorder.add(images, lines)


def trained_checkpoint(policy: str = 'default') -> Path | None:
    """The default policy's checkpoint directory, if one is installed."""
    path = resolve_share_relative(load_policy(policy).checkpoint)
    return path if (path / 'model.safetensors').is_file() else None


def checkpoint_tasks(checkpoint: Path) -> list[str]:
    """The task prompts `checkpoint` was trained on (its bimanual_vla.json), or the default policy's
    task when the checkpoint does not record them."""
    from bimanual_vla.policy_node.checkpoint import read_metadata

    return list(read_metadata(checkpoint).tasks) or [load_policy('default').task]


# Held out from training (the shipped checkpoint's training seeds lie below 1000), and one the shipped
# policy transferred the cube on in both closed-loop evaluations of seeds 1000-1049 (in 5.3 s of sim time).
DEMO_SEED = 1001


def shipped_checkpoint(rig: RigConfig, task: str) -> Path | None:
    """The installed checkpoint for `rig`: the default policy's where it fits the rig's joints and
    cameras (ALOHA's), else `checkpoints/<rig name>_<task>` (the SO-101 twin's, once trained); None if neither."""
    from bimanual_vla.bringup.preflight import check_checkpoint

    default = trained_checkpoint()
    if default is not None:
        try:
            return check_checkpoint(rig, default)
        except ConfigError:  # made for another rig's joints or cameras
            pass
    path = resolve_share_relative(f'checkpoints/{rig.name}_{task}')
    return path if (path / 'model.safetensors').is_file() else None


def no_checkpoint_message(rig: RigConfig, rig_name: str, task: str) -> str:
    """One line: no checkpoint for `rig` and `task` is installed, and how to make one."""
    return (
        f'no checkpoint for rig {rig.name!r} and task {task} is shipped yet; to make one, collect demonstrations '
        f'(bimanual-vla collect OUT --rig {rig_name} --task {task} --episodes 50), train on them '
        f'(bimanual-vla train --data OUT --rig {rig_name} --out DIR), then pass --checkpoint DIR; --driver expert '
        'shows the scripted expert meanwhile'
    )


def _choose_driver(
    task: str | None, driver: str, rig_name: str = 'aloha_sim', checkpoint: str | Path | None = None
) -> tuple[str, Path | None, str]:
    """('policy' or 'expert', the checkpoint or None, the task) for `rig_name`; `task` None: the rig's.

    A checkpoint the user named drives as told ('auto' = policy). Otherwise the rig's shipped one:
    'auto' picks the policy where it learned `task`, the expert where it learned another task, and
    refuses (FileNotFoundError, saying how to make one) where the rig has none. ValueError for a task
    the rig does not run or a policy driver whose checkpoint learned another task.
    """
    rig = load_rig(rig_name)
    task = task_for_rig(rig, task)
    if checkpoint is not None:
        if driver == 'expert':
            raise ValueError('--checkpoint drives with the policy; leave out --driver expert')
        return 'policy', Path(checkpoint).expanduser().resolve(), task
    found = shipped_checkpoint(rig, task)
    if found is None:
        if driver == 'expert':
            return 'expert', None, task
        raise FileNotFoundError(no_checkpoint_message(rig, rig_name, task))
    trained = checkpoint_tasks(found)
    if driver == 'auto':
        driver = 'policy' if TASK_TEXT[task] in trained else 'expert'
    if driver == 'policy' and TASK_TEXT[task] not in trained:
        raise ValueError(
            f"the default policy's checkpoint was trained on {trained}, not {TASK_TEXT[task]!r}; "
            f'use --driver expert for {task}'
        )
    return driver, (found if driver == 'policy' else None), task


def run_demo(
    out: Path,
    *,
    rig_name: str = 'aloha_sim',
    driver: str = 'auto',
    task: str | None = 'transfer_cube',
    checkpoint: str | Path | None = None,
    seed: int | None = None,
    max_sim_s: float = 20.0,
    max_wall_s: float = 300.0,
    real_time_factor: float = 1.0,
    video_fps: float = 10.0,
    camera_size: tuple[int, int] | None = None,
) -> DemoResult:
    """Run one episode of `task` (None: the rig's) and write its video, contact sheet and result; return the result.

    On a twin the arm drivers run in processes of their own (as launch starts them), and
    `real_time_factor` must be in (0, 1] (the drivers run on wall time): ValueError otherwise.
    `camera_size` (width, height) renders every camera at that size instead of the rig file's.
    """
    import rclpy

    from bimanual_vla.bringup.compose import OWN_PROCESS, compose
    from bimanual_vla.bringup.nodes import is_twin, rig_nodes

    seed = DEMO_SEED if seed is None else seed
    rig = load_rig(rig_name)
    driver, checkpoint, task = _choose_driver(task, driver, rig_name, checkpoint)
    twin = is_twin(rig)
    if twin and not 0.0 < real_time_factor <= 1.0:
        raise ValueError(
            f'real_time_factor must be in (0, 1] on the twin {rig.name!r} (its arm drivers run on wall time), '
            f'got {real_time_factor:g}'
        )
    sim = {'task': task, 'seed': seed, 'real_time_factor': real_time_factor, 'expert': driver == 'expert'}
    if camera_size is not None:
        sim['camera_width'], sim['camera_height'] = camera_size
    specs = rig_nodes(
        rig_name,
        policy='default' if driver == 'policy' else None,
        sim_overrides=sim,
        policy_overrides={'enabled': True, 'checkpoint': str(checkpoint)} if driver == 'policy' else None,
    )
    subtask_topic = topics.POLICY_REASONING if driver == 'policy' else topics.SIM_EXPERT_SUBTASK
    result = DemoResult(driver=driver, task=task, seed=seed)
    started = time.monotonic()
    rclpy.init()
    try:
        observer = DemoObserver(
            rig, subtask_topic, video_fps, parameter_overrides=[Parameter('use_sim_time', value=True)]
        )
        if driver == 'policy':
            task_pub = observer.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
            task_pub.publish(String(data=TASK_TEXT[task]))
        own_process = (*OWN_PROCESS, 'arm_driver') if twin else OWN_PROCESS
        composition = compose(specs, rig=rig_name, extra_nodes=[observer], own_process=own_process)

        def finished() -> bool:
            now = observer.sim_time()
            if observer.success_since is not None and now - observer.success_since > 1.5:
                return True
            return now > max_sim_s or time.monotonic() - started > max_wall_s

        try:
            composition.spin(until=finished)
            result.success = observer.success
            result.sim_time_s = round(observer.sim_time(), 3)
            result.subtasks = list(observer.subtasks)
            recorder = observer.recorder
        finally:
            composition.shutdown()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    result.wall_time_s = round(time.monotonic() - started, 2)
    result.frames = len(recorder.frames)
    out.mkdir(parents=True, exist_ok=True)
    if recorder.frames:
        result.outputs['video'] = str(recorder.write_video(out / 'episode.mp4', fps=video_fps))
        result.outputs['contact_sheet'] = str(recorder.write_contact_sheet(out / 'contact_sheet.png', count=12))
    result_path = out / 'result.json'
    result.outputs['result'] = str(result_path)
    result_path.write_text(json.dumps(result.__dict__, indent=2) + '\n')
    return result
