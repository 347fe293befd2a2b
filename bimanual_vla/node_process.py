"""One bringup node in a child process of its own, as `ros2 launch` starts every node.

Python nodes composed in one process share one interpreter lock. The policy node's inference is
many small tensor operations driven from Python, so beside the simulator's physics, rendering and
message handling it spends much of each chunk waiting for the lock. On the 2-core machine the
composed closed loop measured a median 0.36 s from observation to subtask (3.2 chunks/s), where the
model alone takes about 0.07 s per chunk; with the policy node in its own process, 0.26 s (5.3
chunks/s). That is also how the launch files run it on a rig.

The child is started with `spawn` (a fresh interpreter: no forked rclpy or EGL state) and inherits
the environment, so `ROS_DOMAIN_ID` and `ROS_AUTOMATIC_DISCOVERY_RANGE` are the parent's.

The child never outlives its parent. A parent killed by a signal (SIGTERM from a supervisor, SIGKILL,
the OOM killer) runs no exit handlers, so a daemon child would go on spinning on its own: a policy
node holding stale inputs and an inference thread, or commanding arms again if another bringup
starts on the same domain. The child watches its parent and stops within a spin period of its death.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback

from bimanual_vla.bringup import NodeSpec


def _serve(spec: NodeSpec, stop, ready, errors) -> None:
    """The child: create the node, report readiness (or the error), spin until told to stop."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from bimanual_vla.compose import instantiate

    parent = multiprocessing.parent_process()  # the bringup that started this process
    context = rclpy.Context()
    rclpy.init(context=context)
    node = None
    try:
        node = instantiate(spec, context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        ready.set()
        while not stop.is_set() and context.ok() and (parent is None or parent.is_alive()):
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent stops the bringup
        pass
    except BaseException as exc:  # the parent re-raises it with the child's traceback
        errors.put(f'{type(exc).__name__}: {exc}\n{traceback.format_exc()}')
    finally:
        if node is not None:
            node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)


class NodeProcess:
    """Start `spec` in a child process; `stop()` (or leaving the `with` block) ends it."""

    def __init__(self, spec: NodeSpec, *, ready_timeout_s: float = 120.0) -> None:
        self.spec = spec
        self.ready_timeout_s = ready_timeout_s
        ctx = multiprocessing.get_context('spawn')
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._errors = ctx.Queue()
        self.process = ctx.Process(
            target=_serve, args=(spec, self._stop, self._ready, self._errors), name=spec.name, daemon=True
        )

    def start(self) -> NodeProcess:
        """Start the child and wait until its node exists; raise the child's error if it failed."""
        self.process.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.1):
            error = self._error()
            if error is not None or not self.process.is_alive():
                self.stop()
                raise RuntimeError(f'{self.spec.name} failed in its process: {error or "it exited"}')
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f'{self.spec.name} did not start within {self.ready_timeout_s:.0f} s')
        return self

    def _error(self) -> str | None:
        try:
            return self._errors.get_nowait()
        except queue.Empty:
            return None

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the node to finish, then terminate it if it does not within `timeout_s`."""
        self._stop.set()
        if self.process.pid is None:
            return
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
