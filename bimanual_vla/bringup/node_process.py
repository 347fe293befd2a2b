"""One bringup node in a child process of its own, as `ros2 launch` starts every node.

Python nodes composed in one process share one interpreter lock. The policy node's inference is
many small tensor operations driven from Python, so beside the simulator's physics, rendering and
message handling it spends much of each chunk waiting for the lock; in its own process the closed
loop runs more chunks a second with a shorter delay from observation to subtask
(docs/experiments/2026-11-22-policy-node-own-process.md). That is also how the launch files run it on a rig.

The child is started with `spawn` (a fresh interpreter: no forked rclpy or EGL state) and inherits
the environment, so `ROS_DOMAIN_ID` and `ROS_AUTOMATIC_DISCOVERY_RANGE` are the parent's.

The child never outlives its parent. A parent killed by a signal (SIGTERM from a supervisor, SIGKILL,
the OOM killer) runs no exit handlers, so a daemon child would go on spinning on its own: a policy
node holding stale inputs and an inference thread, or commanding arms again if another bringup
starts on the same domain. The child watches its parent and stops within a spin period of its death.

A child that dies can be started again with `respawn` (see bimanual_vla/bringup/supervision.py): a new
process for the same node, possibly with other parameters (a policy node comes back disabled).
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
import traceback
from pathlib import Path

from bimanual_vla.bringup.nodes import NodeSpec
from bimanual_vla.config import ConfigError


def _serve(spec: NodeSpec, stop, ready, errors) -> None:
    """The child: create the node, report readiness (or the error), spin until told to stop."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from bimanual_vla.bringup.compose import instantiate

    # SIGINT reaches the whole process group on Ctrl-C and SIGTERM may come from a service manager:
    # the parent stops its children in order, so the child ignores the group-wide Ctrl-C and ends
    # on SIGTERM through the same path as a stop request.
    terminated = []  # a plain list: a signal handler must not take the locks an Event takes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    parent = multiprocessing.parent_process()  # the bringup that started this process
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = instantiate(spec, context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        ready.set()
        while not terminated and not stop.is_set() and context.ok() and (parent is None or parent.is_alive()):
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # a user's input (config, parameter, checkpoint): its one line is the message
        errors.put((True, str(exc)))
    except BaseException as exc:  # the parent re-raises it with the child's traceback
        errors.put((False, f'{type(exc).__name__}: {exc}\n{traceback.format_exc()}'))
    finally:
        if node is not None:
            node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)


def describe_exit(exitcode: int | None) -> str:
    """'exit status 1', 'killed by SIGKILL', or 'running' for a process's exit code."""
    if exitcode is None:
        return 'running'
    if exitcode < 0:
        try:
            return f'killed by {signal.Signals(-exitcode).name}'
        except ValueError:
            return f'killed by signal {-exitcode}'
    return f'exit status {exitcode}'


def is_stopped(pid: int | None) -> bool:
    """True while process `pid` is stopped (SIGSTOP, a debugger): alive, but running nothing."""
    if pid is None:
        return False
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rpartition(')')[2].split()[0] in ('T', 't')


class NodeProcess:
    """Start `spec` in a child process; `stop()` (or leaving the `with` block) ends it."""

    def __init__(self, spec: NodeSpec, *, ready_timeout_s: float = 120.0) -> None:
        self.spec = spec
        self.ready_timeout_s = ready_timeout_s
        self.config_error = False
        self._ctx = multiprocessing.get_context('spawn')
        self._new_process(spec)

    def _new_process(self, spec: NodeSpec) -> None:
        self.running_spec = spec
        self._stop = self._ctx.Event()
        self._ready = self._ctx.Event()
        self._errors = self._ctx.Queue()
        self.process = self._ctx.Process(
            target=_serve, args=(spec, self._stop, self._ready, self._errors), name=spec.name, daemon=True
        )

    def start(self) -> NodeProcess:
        """Start the child and wait until its node exists; raise the child's error if it failed.

        A ConfigError in the child is raised here as a ConfigError naming the node (one line for the
        user); anything else as a RuntimeError carrying the child's traceback.
        """
        self.process.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.1):
            error = self.error()
            if error is not None or not self.process.is_alive():
                self.stop()
                if self.config_error:
                    raise ConfigError(f'{self.spec.name}: {error}')
                raise RuntimeError(f'{self.spec.name} failed in its process: {error or "it exited"}')
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f'{self.spec.name} did not start within {self.ready_timeout_s:.0f} s')
        return self

    def respawn(self, spec: NodeSpec | None = None) -> None:
        """Start a new process for this node (the old one must have exited); returns without waiting."""
        if self.process.is_alive():
            raise RuntimeError(f'{self.spec.name} (process {self.process.pid}) is still running')
        self._new_process(spec or self.spec)
        self.process.start()

    @property
    def ready(self) -> bool:
        """The node of the current process has been constructed."""
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def error(self) -> str | None:
        """The error the current process reported (its constructor or spin failed), once.

        Sets `config_error`: whether it was a ConfigError (bad configuration, parameter or
        checkpoint; the text is its one line) rather than a crash (the text ends in the traceback).
        """
        try:
            self.config_error, text = self._errors.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return None
        return text

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the node to finish, then terminate it if it does not within `timeout_s`."""
        self._stop.set()
        if self.process.pid is None:
            return
        if is_stopped(self.process.pid):  # a stopped process cannot see the request: let it run to end
            self.process.kill()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
