"""Topic and service names and their QoS profiles: the one place nodes take them from.

Names are relative so a whole rig can be pushed into a namespace. QoS follows
the contract in docs/architecture.md: sensor streams are best effort / keep last
(a late frame is worthless), commands are reliable with depth 1 (only the newest
target matters), and state a late joiner must see (task, reasoning, estop,
robot_description) is transient local.

The rule: a publisher offers the strongest QoS its rate allows; a subscriber of a
user-facing input (estop, policy/task, policy/subtask) accepts any publisher, through
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
"""Cameras and joint_states: best effort, keep last 5, volatile."""

COMMAND_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
)
"""arms/<arm>/joint_command: reliable, keep last 1."""

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
"""/clock as rclpy's time source subscribes to it."""

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
SIM_EXPERT_SUBTASK = 'sim/expert_subtask'
"""std_msgs/String, latched: the scripted expert's current subtask while it drives the sim."""
SIM_RESET_SEED = 'sim/reset_seed'
"""std_msgs/Int64: reset the sim episode to this seed."""

# --------------------------------------------------------------------- services

POLICY_ENABLE = 'policy/enable'
SIM_RESET = 'sim/reset'
"""std_srvs/Trigger: restart the sim episode with the sim_rig's `seed` parameter."""


def camera_image(camera: str) -> str:
    """sensor_msgs/Image (rgb8), stamped with capture time."""
    return f'cameras/{camera}/image_raw'


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


def qualified_joint(arm: str, joint: str) -> str:
    """Joint name as published: ``<arm>_<joint>``."""
    return f'{arm}_{joint}'
