"""Small helpers every node shares: rig parameter, diagnostics status, time conversions, inputs from any publisher."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import qos_policy_name_from_kind
from rclpy.subscription import MessageInfo, Subscription
from rclpy.type_support import MsgT

from bimanual_vla import topics
from bimanual_vla.config import RigConfig, load_rig

# Levels as the message wants them (a single byte: b'\x00' .. b'\x03').
OK: bytes = DiagnosticStatus.OK
WARN: bytes = DiagnosticStatus.WARN
ERROR: bytes = DiagnosticStatus.ERROR
STALE: bytes = DiagnosticStatus.STALE


def declare_rig(node: Node, default: str = '') -> RigConfig:
    """Declare the `rig` parameter (a rig YAML path or shipped rig name) and load it.

    Raises ConfigError (naming file and field) if the parameter is empty or the file is invalid.
    """
    from bimanual_vla.config import ConfigError

    rig = node.declare_parameter('rig', default).get_parameter_value().string_value
    if not rig:
        raise ConfigError(f'node {node.get_name()}: parameter "rig" is required (a rig YAML path or name)')
    return load_rig(rig)


def log_at(node: Node, level: str, message: str) -> None:
    """Log `message` at `level` ('info', 'warn' or 'error'): the libraries' log callback for a node.

    One call site per severity: rclpy keys its logging state by call site and refuses a change of
    severity at one site.
    """
    logger = node.get_logger()
    if level == 'info':
        logger.info(message)
    elif level == 'warn':
        logger.warning(message)
    else:
        logger.error(message)


def diagnostic_status(
    name: str, level: bytes, message: str, values: Mapping[str, Any] | None = None, hardware_id: str = ''
) -> DiagnosticStatus:
    """A DiagnosticStatus with values rendered as strings (floats with 4 significant digits)."""
    status = DiagnosticStatus(name=name, level=level, message=message, hardware_id=hardware_id)
    for key, value in (values or {}).items():
        text = f'{value:.4g}' if isinstance(value, float) else str(value)
        status.values.append(KeyValue(key=key, value=text))
    return status


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(seconds: float) -> Time:
    sec = int(seconds // 1)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


class NewestPerPublisher:
    """Lets through each publisher's messages once, in its publication order (see
    :func:`subscribe_from_any_publisher`); remembers the last `max_publishers` publishers heard."""

    def __init__(self, max_publishers: int = 256) -> None:
        self.max_publishers = max_publishers
        self._newest: OrderedDict[bytes, int] = OrderedDict()

    def accept(self, info: MessageInfo) -> bool:
        gid = info.get('publisher_gid')
        if not gid:
            return True  # a middleware naming no publisher: a duplicate is possible, a loss is not
        publisher = bytes(gid['data'])
        order = info.get('publication_sequence_number')
        if order is None:
            order = info['source_timestamp']
        newest = self._newest.get(publisher)
        if newest is not None:
            self._newest.move_to_end(publisher)
            if order <= newest:
                return False
        self._newest[publisher] = order
        while len(self._newest) > self.max_publishers:
            self._newest.popitem(last=False)
        return True


def subscribe_from_any_publisher(
    node: Node,
    msg_type: type[MsgT],
    topic: str,
    callback: Callable[[MsgT], None],
    *,
    latched: bool,
    callback_group: CallbackGroup | None = None,
    with_info: bool = False,
) -> list[Subscription[MsgT]]:
    """Subscribe to a user-facing input (estop, policy/task, ...) so that a publisher of any QoS reaches
    `callback`: an e-stop must never be lost to a QoS mismatch.

    A subscription matches a publisher only if it asks for no more than the publisher offers, so one
    subscription per kind of publisher, each delivering to `callback`:

    - reliable, transient local (``topics.LATCHED_INPUT_QOS``), only if `latched`: a latched
      publisher's stored value, published before this node started;
    - reliable, volatile (``topics.RELIABLE_QOS``): every reliable publisher (``ros2 topic pub``'s
      default), with the retransmissions that reliability means;
    - best effort, volatile (``topics.ANY_PUBLISHER_QOS``): every publisher, best effort included.

    A reliable publisher matches two or three of them, so its messages arrive more than once.
    Deduplication key: the publisher's GID and the message's publication sequence number, both from
    the ``MessageInfo`` rclpy passes a two-argument callback; the sequence number is the writer's, the
    same on every subscription, and grows with each message it publishes. Per publisher only a
    message newer than the newest one delivered reaches `callback`. This drops a copy however late
    it comes, and it keeps the publication order when the subscriptions deliver out of step: with
    bare deduplication true, false on one subscription and then a late true on another would end at
    true, and a stored value arriving after a newer live one would overwrite it. The newest number
    of the last 256 publishers heard is kept (a few bytes each). A middleware that reports no
    sequence number is ordered by source timestamp instead; one that reports no GID gets no
    deduplication (a duplicate is possible there, a loss is not).

    `callback` takes the message (with `with_info`, also the ``MessageInfo``: a node that publishes on
    the topic itself tells its own messages apart by their publisher GID) and runs under a lock, one
    message at a time, so callbacks of this input never overtake each other even on a multi-threaded
    executor. A publisher that does not match a reliable subscription is expected: the warning rclpy
    would log for it is logged at debug level instead. Returns the subscriptions.
    """
    gate = NewestPerPublisher()
    lock = threading.Lock()

    def deliver(msg: MsgT, info: MessageInfo) -> None:
        with lock:
            if gate.accept(info):
                if with_info:
                    callback(msg, info)
                else:
                    callback(msg)

    def on_incompatible(event: QoSRequestedIncompatibleQoSInfo) -> None:
        node.get_logger().debug(
            f'{topic}: a publisher does not offer what a reliable subscription asks for '
            f'({qos_policy_name_from_kind(event.last_policy_kind)}); the best-effort one hears it'
        )

    profiles = [topics.LATCHED_INPUT_QOS] if latched else []
    profiles.append(topics.RELIABLE_QOS)
    subscriptions = [
        node.create_subscription(
            msg_type,
            topic,
            deliver,
            qos,
            callback_group=callback_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=on_incompatible),
        )
        for qos in profiles
    ]
    subscriptions.append(
        node.create_subscription(msg_type, topic, deliver, topics.ANY_PUBLISHER_QOS, callback_group=callback_group)
    )
    return subscriptions


def run_node(
    label: str,
    node_class: Callable[[], Node],
    args: list[str] | None = None,
    *,
    startup_errors: tuple[type[BaseException], ...] = (ValueError,),
) -> int:
    """The body of every node's ``main()``: start, spin until Ctrl-C, clean up; exit status.

    A node whose constructor raises one of `startup_errors` or a ConfigError (bad config, missing
    device or checkpoint), or that was given a parameter it does not declare or of the wrong type
    (`bimanual_vla/node_parameters.py`, checked before it is constructed), prints one line and
    returns 2 instead of a traceback. `label` is the executable's name. The node spins on a
    SingleThreadedExecutor: every node keeps its slow work in threads of its own, and rclpy's
    MultiThreadedExecutor costs more than it gives (see ``bimanual_vla/bringup/executors.py``).
    """
    import sys

    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from bimanual_vla.config import ConfigError
    from bimanual_vla.node_parameters import check_node_overrides, type_exception_text
    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    rclpy.init(args=args)
    node = None
    try:
        try:
            check_node_overrides(label)  # undeclared or mistyped parameters: one line, before the node starts
            node = node_class()
        except (ConfigError, InvalidParameterTypeException, *startup_errors) as exc:
            text = type_exception_text(exc) if isinstance(exc, InvalidParameterTypeException) else exc
            print(f'{label}: error: {text}', file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
