"""Keep a bringup's child processes running: a dead child is restarted with backoff, never fatal.

A policy node that crashes, is killed by the OOM killer or by a user's `kill -9` must not take the
rig down with it: the arm drivers keep running in the bringup's own process, their watchdog holds
the arms once commands stop (`command_timeout_s`), and e-stop keeps working because it goes to the
drivers directly. The supervisor notices the exit, says why (exit status or signal) in the log and
on `/diagnostics`, and starts the node again after a backoff that doubles with every quick death
(1, 2, 4 ... 30 s) and resets once a child has stayed up for a while. A restarted policy node
comes back with the parameters in `RestartPolicy.overrides` (by default `enabled: false`, as at
start-up): it only moves the arms again once someone calls `policy/enable`.

This is `ros2 launch`'s `respawn=True, respawn_delay=...` for the pip path (`bimanual-vla run`);
the launch files set the same (launch/rig.launch.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bimanual_vla.bringup.node_process import NodeProcess, describe_exit, is_stopped
from bimanual_vla.bringup.nodes import NodeSpec

Log = Callable[[str, str], None]  # (level: 'info'|'warn'|'error', message)

# A restarted policy node waits to be enabled, exactly as it does after `run` starts.
DEFAULT_OVERRIDES: dict[str, dict[str, Any]] = {'policy_node': {'enabled': False}}

# Under `ros2 launch` every node is a process, restarted by launch's own respawn after this delay
# (launch has no backoff). A driver that comes back takes its arm over from the present position,
# as after any reconnect; the simulator is not restarted, since that would reset its world.
LAUNCH_RESPAWN_DELAY_S: dict[str, float] = {'policy_node': 2.0, 'arm_driver': 1.0, 'camera_driver': 1.0}


@dataclass(frozen=True)
class RestartPolicy:
    """How dead children come back (per executable overrides merge into their parameters)."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0  # a child up this long has its backoff reset
    overrides: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_OVERRIDES))

    def respawn_spec(self, spec: NodeSpec) -> NodeSpec:
        extra = self.overrides.get(spec.executable, {})
        return NodeSpec(spec.executable, spec.name, {**spec.parameters, **extra}) if extra else spec


@dataclass
class ChildState:
    """What the supervisor knows about one child, for the log and diagnostics."""

    state: str = 'running'  # running | stopped | restarting | starting
    restarts: int = 0
    last_exit: str = '-'
    last_error: str = '-'
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    backoff_s: float = 0.0


class Supervisor:
    """Polls child processes and restarts the dead ones; call :meth:`poll` a few times a second."""

    def __init__(self, children: Iterable[NodeProcess], policy: RestartPolicy, log: Log | None = None) -> None:
        self.children = list(children)
        self.policy = policy
        self._log = log or (lambda level, message: None)
        now = time.monotonic()
        self.states = {id(c): ChildState(started_at=now, backoff_s=policy.initial_backoff_s) for c in self.children}

    def state(self, child: NodeProcess) -> ChildState:
        return self.states[id(child)]

    def poll(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for child in self.children:
            self._poll_child(child, self.state(child), now)

    def _poll_child(self, child: NodeProcess, st: ChildState, now: float) -> None:
        if st.state == 'restarting':
            if now >= (st.restart_at or now):
                self._restart(child, st, now)
            return
        if child.alive():
            if st.state == 'starting' and child.ready:
                st.state = 'running'
                note = ' (disabled: call policy/enable)' if child.spec.executable == 'policy_node' else ''
                self._log('info', f'{child.spec.name}: restarted as process {child.pid}{note}')
            stopped = is_stopped(child.pid)
            if stopped and st.state == 'running':
                st.state = 'stopped'
                self._log('warn', f'{child.spec.name}: process {child.pid} is stopped (SIGSTOP?); arms hold')
            elif not stopped and st.state == 'stopped':
                st.state = 'running'
                self._log('info', f'{child.spec.name}: process {child.pid} continues')
            if st.state == 'running' and now - st.started_at >= self.policy.stable_after_s:
                st.backoff_s = self.policy.initial_backoff_s
            return
        st.last_exit = describe_exit(child.exitcode)
        error = child.error()
        if error:
            st.last_error = error.splitlines()[0]
        st.state = 'restarting'
        st.restart_at = now + st.backoff_s
        self._log(
            'error',
            f'{child.spec.name}: process {child.pid} died ({st.last_exit}'
            f'{"; " + st.last_error if error else ""}); the arms hold (driver watchdog); '
            f'restarting in {st.backoff_s:g} s',
        )
        st.backoff_s = min(st.backoff_s * 2.0, self.policy.max_backoff_s)

    def _restart(self, child: NodeProcess, st: ChildState, now: float) -> None:
        child.respawn(self.policy.respawn_spec(child.spec))
        st.state = 'starting'
        st.restarts += 1
        st.started_at = now
        st.restart_at = None

    def values(self, child: NodeProcess) -> dict[str, object]:
        """Key/values for a diagnostics status of `child`."""
        st = self.state(child)
        return {
            'state': st.state,
            'pid': child.pid,
            'restarts': st.restarts,
            'last_exit': st.last_exit,
            'last_error': st.last_error,
            'next_backoff_s': st.backoff_s,
        }
