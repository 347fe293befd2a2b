"""End to end on the pip path: the CLI's bringup of the simulated rig + policy node, over real Fast DDS.

`bimanual_vla.bringup.compose` starts exactly the nodes `bimanual-vla run --rig aloha_sim` (and
sim.launch.py) start. For ten seconds a probe node listens to every topic of the contract that
the stack publishes, and checks the nodes subscribe to the ones users publish (task, subtask, e-stop).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla import topics
from bimanual_vla.config import load_policy, load_rig

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_sim_rig_and_policy_publish_every_contract_topic(
    ros_context,
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import Bool, String
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import MarkerArray

    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    rig = load_rig('aloha_sim')
    # The shipped policy settings with staleness limits that a heavily loaded CI machine can meet.
    policy = tmp_path / 'policy.yaml'
    settings = load_policy('default').model_dump()
    settings['staleness'] = {'camera_max_age_s': 2.0, 'joint_max_age_s': 1.0}
    policy.write_text(yaml.safe_dump(settings))
    specs = rig_nodes(
        'aloha_sim',
        policy=str(policy),
        sim_overrides={'seed': 3},
        policy_overrides={'checkpoint': str(tiny_checkpoint), 'enabled': True},
    )
    assert [s.executable for s in specs] == ['sim_rig', 'policy_node']

    probe = Node('contract_probe', context=ros_context)
    received: dict[str, list] = defaultdict(list)
    lock = threading.Lock()

    def listen(msg_type, topic: str, qos) -> None:
        def store(msg, t=topic):
            with lock:
                received[t].append(msg)

        probe.create_subscription(msg_type, topic, store, qos)

    expected = {}
    for cam in rig.cameras:
        expected[topics.camera_image(cam.name)] = (Image, topics.SENSOR_QOS)
        expected[topics.camera_info(cam.name)] = (CameraInfo, topics.SENSOR_QOS)
    for arm in rig.arms:
        expected[topics.arm_command(arm.name)] = (JointState, topics.COMMAND_QOS)
    expected.update(
        {
            topics.JOINT_STATES: (JointState, topics.SENSOR_QOS),
            topics.POLICY_REASONING: (String, topics.LATCHED_QOS),
            topics.POLICY_ACTION_CHUNK: (JointTrajectory, topics.RELIABLE_QOS),
            topics.POLICY_MARKERS: (MarkerArray, topics.RELIABLE_QOS),
            topics.DIAGNOSTICS: (DiagnosticArray, topics.DIAGNOSTICS_QOS),
            topics.ROBOT_DESCRIPTION: (String, topics.LATCHED_QOS),
            topics.CLOCK: (Clock, topics.CLOCK_QOS),
            topics.SIM_SUCCESS: (Bool, topics.LATCHED_QOS),
        }
    )
    for topic, (msg_type, qos) in expected.items():
        listen(msg_type, topic, qos)
    task_pub = probe.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
    task_pub.publish(String(data='transfer the cube to the left arm'))

    composition = compose(specs, rig='aloha_sim', context=ros_context, extra_nodes=[probe])
    try:
        # As launch would: the policy node in a process of its own, the simulator in this one.
        assert [c.spec.name for c in composition.children] == ['policy_node']
        assert 'policy_node' not in {n.get_name() for n in composition.nodes}
        start = time.monotonic()
        # At least ten seconds, and on a loaded machine until every topic has spoken (at most 60 s).
        composition.spin(duration_s=10.0)

        def all_spoke() -> bool:
            with lock:
                return all(received[t] for t in expected)

        composition.spin(duration_s=50.0, until=all_spoke)
        elapsed = time.monotonic() - start
        # Topics users publish: the stack must be listening to them.
        for topic in (topics.POLICY_TASK, topics.POLICY_SUBTASK, topics.ESTOP):
            assert probe.count_subscribers(topic) >= 1, f'nobody subscribes to {topic}'
        assert probe.count_subscribers(topics.arm_command('left')) >= 2  # sim_rig + the probe
    finally:
        composition.shutdown()

    with lock:
        missing = sorted(t for t in expected if not received[t])
        assert not missing, f'no message on {missing} in {elapsed:.1f} s'
        names = {n for m in received[topics.JOINT_STATES][-20:] for n in m.name}  # one message per arm
        assert names == set(rig.all_joint_names())
        for arm in rig.arms:
            cmd = received[topics.arm_command(arm.name)][-1]
            assert list(cmd.name) == arm.qualified_joint_names()
            lows = np.array([j.lower for j in arm.joints])
            highs = np.array([j.upper for j in arm.joints])
            pos = np.array(cmd.position)
            assert np.all(np.isfinite(pos)) and np.all(pos >= lows - 1e-9) and np.all(pos <= highs + 1e-9)
        image = received[topics.camera_image('top')][-1]
        assert (image.encoding, image.width, image.height) == ('rgb8', 320, 240)
        assert image.header.frame_id == topics.camera_frame('top')
        assert received[topics.ROBOT_DESCRIPTION][0].data.lstrip().startswith('<?xml')
        assert received[topics.POLICY_REASONING][-1].data != ''
        chunk = received[topics.POLICY_ACTION_CHUNK][-1]
        assert list(chunk.joint_names) == rig.all_joint_names() and len(chunk.points) > 1
        reporters = {s.name for m in received[topics.DIAGNOSTICS] for s in m.status}
        assert any('sim_rig' in r for r in reporters) and any('policy' in r for r in reporters), reporters


def test_demo_writes_video_contact_sheet_and_result(tmp_path: Path) -> None:
    import json

    from bimanual_vla.learning.demo import run_demo

    result = run_demo(tmp_path / 'demo', driver='expert', seed=1, max_sim_s=12.0, real_time_factor=0.0)
    assert result.driver == 'expert'
    assert result.success, result
    data = json.loads((tmp_path / 'demo' / 'result.json').read_text())
    assert data['success'] is True and data['subtasks'][0].startswith('move the right gripper')
    import cv2

    sheet = cv2.imread(str(tmp_path / 'demo' / 'contact_sheet.png'))
    assert sheet is not None and sheet.shape[0] > 240 and sheet.shape[1] > 3 * 240
    video = cv2.VideoCapture(str(tmp_path / 'demo' / 'episode.mp4'))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == result.frames > 10


def test_demo_task_all_runs_each_task_of_the_scene_with_its_own_prompt(tmp_path: Path, capsys) -> None:
    """`demo --task all`: transfer_cube then insertion, each in OUT/<task>/ with its own narration."""
    import json

    from bimanual_vla.cli.main import main

    args = ['demo', '--task', 'all', '--driver', 'expert', '--seed', '1', '--max-sim-s', '2.0']
    main([*args, '--real-time-factor', '0', '--out', str(tmp_path / 'demo')])  # 2 s: not a success, 1
    printed = json.loads(capsys.readouterr().out)
    assert [r['task'] for r in printed] == ['transfer_cube', 'insertion']
    for task, first in (('transfer_cube', 'move the right gripper'), ('insertion', 'move the grippers above')):
        data = json.loads((tmp_path / 'demo' / task / 'result.json').read_text())
        assert data['task'] == task and data['driver'] == 'expert' and data['frames'] > 5
        assert data['subtasks'][0].startswith(first), data['subtasks']


def test_demo_drives_the_rig_with_the_shipped_checkpoint(tmp_path: Path) -> None:
    """`make demo` uses the trained checkpoint shipped in checkpoints/: it loads, moves the arms and narrates."""
    from bimanual_vla.learning.demo import run_demo, trained_checkpoint

    assert trained_checkpoint() is not None, 'checkpoints/aloha_transfer_cube is part of the project'
    from bimanual_vla.policy_node.checkpoint import read_metadata

    # last fine-tuned on sim bags that stamp commands when issued: its chunks start at the snapshot
    assert read_metadata(trained_checkpoint()).action_time_offset_s == 0.0
    result = run_demo(tmp_path / 'demo', seed=1003, max_sim_s=6.0)  # driver 'auto': the checkpoint
    assert result.driver == 'policy'
    assert result.sim_time_s >= 6.0
    # its own subtask text, in the task's order: reach, lower, grasp... (the expert needs 3.4 s for four)
    assert 'move the right gripper above the cube' in result.subtasks[:2], result.subtasks
    first = result.subtasks.index('move the right gripper above the cube')
    assert 'lower the right gripper around the cube' in result.subtasks[first + 1 :], result.subtasks
    assert len(result.subtasks) >= 3, result.subtasks


def test_demo_refuses_the_cube_policy_on_another_task(tmp_path: Path) -> None:
    from bimanual_vla.learning.demo import checkpoint_tasks, run_demo, trained_checkpoint

    # the shipped checkpoint records the prompt it was trained on; the demo decides by it
    assert checkpoint_tasks(trained_checkpoint()) == ['transfer the cube from the right arm to the left arm']
    with pytest.raises(ValueError, match="not 'insert the peg into the socket'"):
        run_demo(tmp_path / 'demo', driver='policy', task='insertion')
    with pytest.raises(ValueError, match="unknown task 'stack'"):
        run_demo(tmp_path / 'demo', task='stack')
    assert not (tmp_path / 'demo').exists()  # refused before anything started or was written
