"""The policy node's inference thread, without ROS: snapshot the inputs, run the model, hand the chunk on.

A plain Python thread, so the model's seconds never occupy an executor thread. It talks to the node
only through what it is given: the scheduler and the lock that guards it, a clock (seconds of the
node's time), the prompt (read under the lock), an image decoder, a logger, and two callbacks
(``on_subtask`` the moment the model has written a subtask, ``on_chunk`` for every accepted chunk).
Camera frames are decoded here (raw or JPEG, ``image_msgs.decode_image`` by default), never in the
node's callbacks, which only store the message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from bimanual_vla.config import PolicyConfig
from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.policy_node.scheduler import InferenceInputs, Scheduler

F = TypeVar('F')  # a camera frame as it arrived (a ROS Image in the node)


@dataclass
class Snapshot(Generic[F]):
    """One inference's inputs: the scheduler's (times, frames, guide plan) plus what the model reads."""

    inputs: InferenceInputs[F]
    images: dict[str, np.ndarray]
    task: str
    guide: object | None  # the model's ChunkGuide
    decode_subtask: bool
    override: str | None

    @property
    def stamp(self) -> float:
        return self.inputs.t_obs

    @property
    def camera_stamps(self) -> dict[str, float]:
        return self.inputs.camera_stamps

    @property
    def state(self) -> np.ndarray:
        return self.inputs.state


def load_model(checkpoint: Path, policy_cfg: PolicyConfig) -> Any:
    """The checkpoint's VLAPolicy as the policy file configures it (device, flow steps, threads)."""
    from bimanual_vla.policy_node.model import VLAPolicy  # torch/transformers: only when a node is built

    inf = policy_cfg.inference
    if inf.torch_threads > 0:  # torch's default takes every core and starves the control loop
        import torch

        torch.set_num_threads(inf.torch_threads)
    return VLAPolicy.load(
        checkpoint, device=inf.device, num_steps=inf.num_steps, max_subtask_tokens=policy_cfg.reasoning.max_tokens
    )


class InferenceWorker(Generic[F]):
    """Runs inference whenever the scheduler says one is due and the inputs are usable."""

    def __init__(
        self,
        *,
        model: Any,  # a VLAPolicy (or anything with its infer)
        scheduler: Scheduler[F],
        lock: threading.Lock,
        policy_cfg: PolicyConfig,
        camera_names: Sequence[str],
        clock: Callable[[], float],
        prompt: Callable[[], tuple[str, str | None]],
        decode_image: Callable[[F], np.ndarray] | None = None,
        decode_errors: tuple[type[BaseException], ...] | None = None,
        logger: Any,  # .error(message, throttle_duration_sec=...)
        on_subtask: Callable[[str, int], None],
        on_chunk: Callable[[Any, Snapshot[F], Chunk], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.model, self.scheduler, self.lock = model, scheduler, lock
        self.stats = scheduler.stats
        self.policy_cfg = policy_cfg
        self.camera_names = list(camera_names)
        self.clock, self.prompt = clock, prompt
        if decode_image is None or decode_errors is None:
            # sensor_msgs Image or CompressedImage (JPEG): decoded here, in the inference thread, never in a callback
            from bimanual_vla.image_msgs import ImageError
            from bimanual_vla.image_msgs import decode_image as decode_any

            decode_image, decode_errors = decode_image or decode_any, decode_errors or (ImageError,)
        self.decode_image, self.decode_errors = decode_image, decode_errors
        self.logger = logger
        self.on_subtask, self.on_chunk = on_subtask, on_chunk
        self.stop_event = stop if stop is not None else threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name='policy_inference', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=timeout)

    def snapshot(self) -> Snapshot[F] | None:
        """Everything one inference needs, copied under the lock; None if inputs are not usable."""
        now = self.clock()
        with self.lock:
            self.scheduler.note_time(now)
            task, override = self.prompt()
            inputs = self.scheduler.plan_inference(now) if task else None
            if inputs is None:
                return None
        guide = None
        if inputs.plan is not None:
            inference = self.policy_cfg.inference
            guide = inputs.plan.to_chunk_guide(inference.rtc_beta, inference.rtc_jacobian)
        images = {}
        for cam in self.camera_names:
            try:
                images[cam] = self.decode_image(inputs.frames[cam])
            except self.decode_errors as exc:
                self.stats.bad_images += 1
                self.stats.last_error = f'camera {cam}: {exc}'
                return None
        reasoning = self.policy_cfg.reasoning
        decode = reasoning.enabled and self.stats.chunks % reasoning.every_n_chunks == 0
        return Snapshot(inputs, images, task, guide, decode, override)

    def run(self) -> None:
        """The thread's loop, until ``stop``."""
        while not self.stop_event.is_set():
            if not self.scheduler.inference_due(self.clock()):
                self.stop_event.wait(0.002)
                continue
            snap = self.snapshot()
            if snap is None:
                self.stop_event.wait(0.02)
                continue
            self.infer(snap)

    def infer(self, snap: Snapshot[F]) -> None:
        """One inference on ``snap``: the chunk to the scheduler, or the failure counted and logged."""
        from bimanual_vla.policy_node.model import NonFiniteActionError, Observation

        started = self.clock()
        wall0 = time.monotonic()
        obs = Observation(images=snap.images, state=snap.state, task=snap.task, stamp=snap.stamp)
        epoch = snap.inputs.epoch
        try:
            result = self.model.infer(
                obs,
                decode_subtask=snap.decode_subtask,
                subtask_override=snap.override,
                guide=snap.guide,
                on_subtask=lambda text: self.on_subtask(text, epoch),
            )
        except NonFiniteActionError as exc:
            self.stats.nonfinite_chunks += 1
            self.stats.last_error = f'model output rejected: {exc}'
            self.logger.error(f'non-finite model output rejected (never sent): {exc}', throttle_duration_sec=5)
            self.scheduler.pace(started, epoch)
            return
        except Exception as exc:  # keep the node alive; diagnostics go ERROR and name it
            self.stats.inference_errors += 1
            self.stats.last_error = f'{type(exc).__name__}: {exc}'
            self.logger.error(f'inference failed: {self.stats.last_error}', throttle_duration_sec=5)
            self.stop_event.wait(0.5)
            return
        self.stats.inference_ms.append((time.monotonic() - wall0) * 1e3)
        self.scheduler.inference_finished(started, self.clock(), epoch)
        self.accept(result, snap)

    def accept(self, result: Any, snap: Snapshot[F]) -> None:
        """Offer the model's chunk to the scheduler; ``on_chunk`` when it takes it."""
        now = self.clock()
        with self.lock:
            outcome = self.scheduler.accept_chunk(result.actions, snap.inputs, now)
        if outcome.status == 'invalid':
            self.logger.error(self.stats.last_error, throttle_duration_sec=5)
        if outcome.status != 'accepted' or outcome.chunk is None:
            return
        self.on_chunk(result, snap, outcome.chunk)
