"""The policy node's side of the link to the robot: camera subscriptions (raw or JPEG) and the clock probe.

On one computer the node reads ``cameras/<cam>/image_raw`` over shared memory and both ends share a
clock. With the policy on another computer (the rig file's ``policy_host``, docs/remote_policy.md):

* **images**: ``image_transport: compressed`` reads ``image_raw/compressed`` (JPEG, 20-40x fewer
  bytes). Callbacks only store the message; the inference thread decodes it
  (``image_msgs.decode_image``), so a callback never spends milliseconds in a JPEG decoder.
* **clocks**: a probe on ``clock_sync/ping`` five times a second, answered by the robot half's
  ``clock_responder`` on ``clock_sync/pong``; ``clock_offset.ClockOffset`` turns the exchanges into
  the offset applied to every robot stamp (``local``) and to trajectory starts (``outgoing``),
  and into the return link's delay, which the scheduler adds to the RTC latency. An offset over
  ``max_clock_offset_s`` (or none measured on a remote rig) refuses ``policy/enable`` and disables
  an enabled policy; a remote rig's ``enabled`` at start waits for the first good measurement.

Parameters (the node declares them through ``declare``): ``image_transport`` (``''``: compressed
when the rig says the policy is remote, else raw), ``max_clock_offset_s`` (0.05 s, at most 0.5 s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, TimeReference

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, RigConfig
from bimanual_vla.policy_node.clock_offset import DEFAULT_MAX_OFFSET_S, MAX_CLOCK_OFFSET_S, ClockOffset
from bimanual_vla.policy_node.command_output import Outgoing
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Scheduler
from bimanual_vla.policy_node.trajectory_plan import PlannedTrajectory
from bimanual_vla.ros_utils import sec_to_stamp, stamp_to_sec

TRANSPORTS = ('raw', 'compressed')
PROBE_PERIOD_S = 0.2


def choose_transport(rig: RigConfig, value: object) -> str:
    """The ``image_transport`` parameter: raw or compressed, '' for the rig's default (ConfigError otherwise)."""
    if value == '':
        return 'compressed' if rig.policy_host else 'raw'
    if value not in TRANSPORTS:
        raise ConfigError(f'node policy_node: parameter image_transport must be raw or compressed, got {value!r}')
    return str(value)


class RemoteLink:
    """Creates the camera subscriptions and the clock probe on ``node``; see the module docstring."""

    def __init__(
        self,
        node: Node,
        rig: RigConfig,
        camera_names: Sequence[str],
        on_image: Callable[[str, Any, float], None],
        *,
        lock: AbstractContextManager,
        scheduler: Scheduler,
        gate: CommandGate,
    ) -> None:
        """``on_image(cam, msg, stamp)``: a frame and its stamp on the node's clock. ``lock`` guards
        ``scheduler`` (whose ``link_delay_s`` it sets) and ``gate`` (which it disables on a bad offset)."""
        self.node, self.lock, self.scheduler, self.gate = node, lock, scheduler, gate
        self.transport = choose_transport(rig, node.declare_parameter('image_transport', '').value)
        bound = node.declare_parameter('max_clock_offset_s', DEFAULT_MAX_OFFSET_S).value
        try:
            MAX_CLOCK_OFFSET_S.check(float(bound))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'node policy_node: parameter max_clock_offset_s: {exc}') from None
        self.clock = ClockOffset(max_offset_s=float(bound), required=bool(rig.policy_host))
        self._on_image = on_image
        # A remote rig enabled at start waits, disabled, for a measured offset within the bound.
        self._enable_when_ready = self.clock.check() is not None and gate.enabled
        if self._enable_when_ready:
            gate.set_enabled(False)
        compressed = self.transport == 'compressed'
        for cam in camera_names:
            name = topics.camera_image_compressed(cam) if compressed else topics.camera_image(cam)
            kind = CompressedImage if compressed else Image
            node.create_subscription(kind, name, self._image_callback(cam), topics.SENSOR_QOS)
        self._source = node.get_fully_qualified_name()
        self._ping = node.create_publisher(TimeReference, topics.CLOCK_SYNC_PING, topics.SENSOR_QOS)
        node.create_subscription(TimeReference, topics.CLOCK_SYNC_PONG, self._on_pong, topics.SENSOR_QOS)
        node.create_timer(PROBE_PERIOD_S, self._probe)

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _image_callback(self, cam: str) -> Callable[[Any], None]:
        def on_image(msg: Any) -> None:
            self._on_image(cam, msg, self.local(msg.header.stamp))

        return on_image

    def local(self, stamp: Any) -> float:
        """A robot header stamp on this node's clock (seconds)."""
        return self.clock.to_local(stamp_to_sec(stamp))

    def outgoing(self, out: Outgoing) -> Outgoing:
        """A trajectory's start on the robot's clock (a tick's command carries no time the driver uses)."""
        if isinstance(out, PlannedTrajectory):
            return dataclasses.replace(out, t0=self.clock.to_robot(out.t0))
        return out

    # ------------------------------------------------------------------ clock

    def _probe(self) -> None:
        now = self._now()
        if now == 0.0:  # use_sim_time and no /clock yet
            return
        msg = TimeReference(source=self._source)
        msg.header.frame_id = str(self.clock.probe(now))
        msg.header.stamp = sec_to_stamp(now)
        self._ping.publish(msg)

    def _on_pong(self, msg: TimeReference) -> None:
        if msg.source != self._source or not msg.header.frame_id.isdigit():
            return  # another policy node's exchange
        t4 = self._now()
        self.clock.answer(int(msg.header.frame_id), stamp_to_sec(msg.time_ref), stamp_to_sec(msg.header.stamp), t4)
        problem = self.clock.check()
        with self.lock:
            self.scheduler.link_delay_s = self.clock.one_way_delay_s()
            disable = problem is not None and self.gate.enabled
            if disable:
                self.gate.set_enabled(False)
            enable = problem is None and self._enable_when_ready
            if enable:
                self._enable_when_ready = False
                self.gate.set_enabled(True)
        if disable:
            self.node.get_logger().error(f'policy disabled: {problem}')
        elif enable:
            self.node.get_logger().info(f'clock offset {self.clock.offset_s * 1e3:+.1f} ms measured: enabled')

    def enable_problem(self) -> str | None:
        """Why ``policy/enable true`` must be refused now (None: the clocks allow it)."""
        return self.clock.check()

    def values(self) -> dict[str, object]:
        return {'image_transport': self.transport, **self.clock.values()}
