"""Topic and service names and their QoS profiles: the one place nodes take them from.

Names are relative so a whole rig can be pushed into a namespace. QoS follows
the contract in docs/architecture.md (section "Topics, services and QoS", with the
table of what standard tools ask for on each topic).

The rule: a publisher offers the strongest QoS its rate allows, so that any subscriber
matches it, including the ones that ask for reliable delivery by default
(``create_subscription(..., 10)``, MoveIt's state monitor, diagnostic_aggregator):
joint_states and commands are reliable, state a late joiner must see (task, reasoning,
estop, robot_description) is transient local too, and only camera frames are best
effort (a 900 KB frame is not worth retransmitting). A subscriber accepts any publisher:
high-rate streams (images, joint_states, joint_command) with a best-effort subscription
(SENSOR_QOS, COMMAND_INPUT_QOS), which matches reliable and best-effort publishers alike;
user-facing inputs (estop, policy/task, policy/subtask) through
``ros_utils.subscribe_from_any_publisher`` (LATCHED_INPUT_QOS, RELIABLE_QOS and
ANY_PUBLISHER_QOS at once), so an e-stop can never be lost to a QoS mismatch.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

# ----------------------------------------------------------------- QoS profiles

SENSOR_QOS: QoSProfile = qos_profile_sensor_data
"""Best effort, keep last 5, volatile: camera images and camera_info as published, and every subscription
to a high-rate stream (images, joint_states), which so accepts reliable and best-effort publishers."""

STATE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
"""joint_states as published (arm drivers, sim): reliable, keep last 10, what joint_state_broadcaster offers,
so reliable subscribers (a default ``create_subscription(..., 10)``, MoveIt's CurrentStateMonitor) receive
it. It costs the driver's I/O loop little (docs/experiments/2026-12-07-reliable-joint-states.md)."""

COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""arms/<arm>/joint_command as published: reliable, keep last 1."""

COMMAND_INPUT_QOS = QoSProfile(
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""arms/<arm>/joint_command as subscribed (arm driver, sim): best effort, keep last 1, so a command from any
publisher is taken (``ros2 topic pub``'s reliable default, the policy node's reliable stream, a best-effort
teleoperation node); only the newest target matters, and the next one follows within a control period."""

LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""policy/task, policy/reasoning, estop, robot_description: late joiners get the last value."""

RELIABLE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
"""policy/action_chunk, policy/markers, sim/success; a user-facing input's subscription for reliable publishers."""

TRAJECTORY_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""arms/<arm>/joint_trajectory, published and subscribed: reliable (one message carries many ticks, and
ros2_controllers' joint trajectory controller subscribes reliable too), keep last 1 (a newer trajectory
replaces an older one anyway)."""

LATCHED_INPUT_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
"""A latched user-facing input's subscription for the value stored before it started: LATCHED_QOS
with room for a burst, so a quick true, false, true is not cut to its last value before the callback."""

ANY_PUBLISHER_QOS = QoSProfile(
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
"""A user-facing input's subscription for any publisher (``ros_utils.subscribe_from_any_publisher``):
best effort and volatile ask for the least, so every publisher matches it."""

DIAGNOSTICS_QOS: QoSProfile = qos_profile_system_default
"""diagnostics: the ROS default (reliable, keep last 10)."""

CLOCK_QOS = QoSProfile(
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""/clock, published and subscribed: best effort, keep last 1, ROS's convention (rclcpp's ClockQoS, which
simulators use too); rclpy's and rclcpp's time sources subscribe best effort, so they accept any /clock publisher."""

# ----------------------------------------------------------------------- topics

JOINT_STATES = 'joint_states'
POLICY_TASK = 'policy/task'
POLICY_SUBTASK = 'policy/subtask'
POLICY_REASONING = 'policy/reasoning'
POLICY_ACTION_CHUNK = 'policy/action_chunk'
POLICY_MARKERS = 'policy/markers'
ESTOP = 'estop'
DIAGNOSTICS = '/diagnostics'
ROBOT_DESCRIPTION = 'robot_description'
CLOCK = '/clock'
SIM_SUCCESS = 'sim/success'
RECORD_EPISODE = 'record/episode'
"""std_msgs/String: a label starts a labelled episode in the bag being recorded, '' ends it."""
RECORD_DISCARD = 'record/discard'
"""std_msgs/String (JSON ``{"label": ...}``): the episode of that label recorded last is discarded (re-recorded)."""
RECORD_CONTROL = 'record/control'
"""std_msgs/String: ``next`` ends the episode or reset early, ``rerecord`` re-records the last one, ``stop`` stops."""
TELEOP_INTERVENTION = 'teleop/intervention'
"""std_msgs/String (JSON ``{"arms": [...], "event": "start"|"end"|"state", "arm": ...}``), latched: the arms a
human has taken over from the policy; the policy node mutes them, the recorder keeps the takeover segments."""
TELEOP_TAKEOVER = 'teleop/takeover'
"""std_msgs/String: ``<arm>`` takes that arm over from the policy (takeover mode), ``release [<arm>]`` hands back."""
CLOCK_SYNC_PING = 'clock_sync/ping'
"""sensor_msgs/TimeReference: the policy node's clock probe (``header.frame_id`` its id, ``source`` the node)."""
CLOCK_SYNC_PONG = 'clock_sync/pong'
"""sensor_msgs/TimeReference: clock_responder's answer: ``time_ref`` when the probe arrived, ``header.stamp``
when the answer left (robot clock), ``header.frame_id`` and ``source`` copied from the probe."""
SIM_EXPERT_SUBTASK = 'sim/expert_subtask'
"""std_msgs/String, latched: the scripted expert's current subtask while it drives the sim."""
SIM_RESET_SEED = 'sim/reset_seed'
"""std_msgs/Int64: reset the sim episode to this seed."""
SIM_PERTURB = 'sim/perturb'
"""std_msgs/String: perturb the running episode at the next tick: ``drop`` | ``move`` (sim/perturbation.py)."""
SIM_EXPERT_COACH = 'sim/expert_coach'
"""std_msgs/String: a subtask the sim's scripted expert does at the next tick, then the task again (collect --coach)."""

# --------------------------------------------------------------------- services

POLICY_ENABLE = 'policy/enable'
SIM_RESET = 'sim/reset'
"""std_srvs/Trigger: restart the sim episode with the sim_rig's `seed` parameter."""
TELEOP_ENABLE = 'teleop/enable'
"""std_srvs/SetBool: true arms teleoperation (after an e-stop, or disarmed), false disarms it."""


def camera_image(camera: str) -> str:
    """sensor_msgs/Image (rgb8), stamped with capture time."""
    return f'cameras/{camera}/image_raw'


def camera_image_compressed(camera: str) -> str:
    """sensor_msgs/CompressedImage (JPEG) of camera_image: image_transport's ``compressed`` name."""
    return f'{camera_image(camera)}/compressed'


def camera_info(camera: str) -> str:
    """sensor_msgs/CameraInfo matching camera_image."""
    return f'cameras/{camera}/camera_info'


def camera_frame(camera: str) -> str:
    """frame_id of a camera's images."""
    return f'{camera}_optical_frame'


def arm_command(arm: str) -> str:
    """sensor_msgs/JointState position targets for one arm."""
    return f'arms/{arm}/joint_command'


def arm_trajectory(arm: str) -> str:
    """trajectory_msgs/JointTrajectory for one arm, played by its driver (docs/arm_driver.md, Trajectories)."""
    return f'arms/{arm}/joint_trajectory'


def arm_torque(arm: str) -> str:
    """std_srvs/SetBool: torque on/off for one arm."""
    return f'arms/{arm}/torque'


def leader_joint_states(arm: str) -> str:
    """sensor_msgs/JointState: what arm <arm>'s leader asks of it (follower joint names, radians; teleop)."""
    return f'leader/{arm}/joint_states'


def qualified_joint(arm: str, joint: str) -> str:
    """Joint name as published: ``<arm>_<joint>``."""
    return f'{arm}_{joint}'
