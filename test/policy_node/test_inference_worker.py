"""The policy node's inference thread (policy_node/inference_worker.py), checked by value with a fake model."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from bimanual_vla.config import load_policy
from bimanual_vla.policy_node.inference_worker import InferenceWorker
from bimanual_vla.policy_node.scheduler import Scheduler, scheduler_for_policy

DT = 1 / 32
JOINTS = ['left_a', 'left_b', 'right_a', 'right_b']
CAMS = ['top', 'wrist']
H = 8


class BadFrame(ValueError):
    pass


def decode(frame: str) -> np.ndarray:
    if frame.startswith('bad'):
        raise BadFrame(f'cannot decode {frame}')
    return np.full((2, 2, 3), len(frame), dtype=np.uint8)


class Logger:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, message: str, **_kwargs) -> None:
        self.errors.append(message)


class Model:
    """Returns ``actions`` (or raises ``error``), writing ``subtask`` first, like VLAPolicy.infer."""

    def __init__(self, actions: np.ndarray | None = None, error: Exception | None = None) -> None:
        self.actions, self.error, self.calls = actions, error, []

    def infer(self, obs, *, decode_subtask, subtask_override, guide, on_subtask):
        self.calls.append((obs, decode_subtask, subtask_override, guide))
        if self.error is not None:
            raise self.error
        on_subtask('reach')
        return SimpleNamespace(actions=self.actions, subtask='reach', subtask_source='model')


def make(model: Model, task: str = 'fold', reasoning_every: int = 1):
    cfg = load_policy('default')
    cfg = cfg.model_copy(
        update={
            'inference': cfg.inference.model_copy(update={'chunk_start': 'snapshot', 'action_time_offset_s': 0.0}),
            'reasoning': cfg.reasoning.model_copy(update={'every_n_chunks': reasoning_every}),
        }
    )
    arms = {'left': np.array([0, 1]), 'right': np.array([2, 3])}
    scheduler: Scheduler[str] = scheduler_for_policy(
        cfg, dt=DT, chunk_size=H, action_time_offset_s=0.0, joint_names=JOINTS, camera_names=CAMS,
        arm_columns=arms, strategy='naive',
    )  # fmt: skip
    clock = SimpleNamespace(now=10.0)
    got = SimpleNamespace(subtasks=[], chunks=[], logger=Logger(), clock=clock)
    worker: InferenceWorker[str] = InferenceWorker(
        model=model,
        scheduler=scheduler,
        lock=threading.Lock(),
        policy_cfg=cfg,
        camera_names=CAMS,
        clock=lambda: clock.now,
        prompt=lambda: (task, 'grasp'),
        decode_image=decode,
        decode_errors=(BadFrame,),
        logger=got.logger,
        on_subtask=lambda text, epoch: got.subtasks.append((text, epoch)),
        on_chunk=lambda result, snap, chunk: got.chunks.append((result.subtask, snap.stamp, chunk)),
    )
    return worker, scheduler, got


def feed(s: Scheduler[str], t: float, frame: str = 'frame') -> None:
    for cam in CAMS:
        s.add_frame(cam, f'{frame}-{cam}', stamp=t, arrival=t)
    s.add_joints(t, JOINTS, [0.25, 0.5, 0.75, 1.0])


def test_the_snapshot_holds_the_decoded_frames_joints_and_prompt() -> None:
    worker, scheduler, _ = make(Model())
    assert worker.snapshot() is None  # no inputs yet
    feed(scheduler, 10.0)
    snap = worker.snapshot()
    assert snap is not None
    assert snap.stamp == 10.0 and snap.camera_stamps == {'top': 10.0, 'wrist': 10.0}
    assert snap.state.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert sorted(snap.images) == CAMS and int(snap.images['wrist'][0, 0, 0]) == len('frame-wrist')
    assert (snap.task, snap.override, snap.decode_subtask, snap.guide) == ('fold', 'grasp', True, None)


def test_no_snapshot_without_a_task_or_with_an_undecodable_frame() -> None:
    worker, scheduler, _ = make(Model(), task='')
    feed(scheduler, 10.0)
    assert worker.snapshot() is None
    worker, scheduler, _ = make(Model())
    feed(scheduler, 10.0, frame='bad')
    assert worker.snapshot() is None
    assert scheduler.stats.bad_images == 1 and scheduler.stats.last_error == 'camera top: cannot decode bad-top'


def test_an_inference_hands_its_subtask_and_its_accepted_chunk_on() -> None:
    actions = np.arange(H * len(JOINTS), dtype=float).reshape(H, len(JOINTS))
    model = Model(actions)
    worker, scheduler, got = make(model)
    feed(scheduler, 10.0)
    snap = worker.snapshot()
    assert snap is not None
    worker.infer(snap)
    assert got.subtasks == [('reach', scheduler.epoch)]
    assert len(got.chunks) == 1 and scheduler.stats.chunks == 1
    subtask, stamp, chunk = got.chunks[0]
    assert (subtask, stamp, chunk.t0, chunk.dt) == ('reach', 10.0, 10.0, DT)
    np.testing.assert_array_equal(chunk.actions, actions)
    obs = model.calls[0][0]
    assert (obs.task, obs.stamp) == ('fold', 10.0) and got.logger.errors == []


def test_subtasks_are_decoded_every_n_chunks() -> None:
    worker, scheduler, _ = make(Model(), reasoning_every=2)
    feed(scheduler, 10.0)
    scheduler.stats.chunks = 1
    snap = worker.snapshot()
    assert snap is not None and not snap.decode_subtask


@pytest.mark.parametrize(
    ('error', 'counter', 'logged'),
    [
        ('nonfinite', 'nonfinite_chunks', 'non-finite model output rejected (never sent): nan'),
        (RuntimeError('boom'), 'inference_errors', 'inference failed: RuntimeError: boom'),
    ],
)
def test_a_failed_inference_is_counted_logged_and_sends_nothing(error, counter, logged) -> None:
    if error == 'nonfinite':
        from bimanual_vla.policy_node.model import NonFiniteActionError

        error = NonFiniteActionError('nan')
    worker, scheduler, got = make(Model(error=error))
    worker.stop_event.set()  # the error path's back-off returns at once
    feed(scheduler, 10.0)
    snap = worker.snapshot()
    assert snap is not None
    worker.infer(snap)
    assert getattr(scheduler.stats, counter) == 1 and got.chunks == [] and got.logger.errors == [logged]


def test_the_thread_stops_and_joins() -> None:
    worker, _, _ = make(Model())
    worker.start()
    worker.stop(timeout=5.0)
    assert worker._thread is not None and not worker._thread.is_alive()
