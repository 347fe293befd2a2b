"""The rig split across two "computers": the robot half and the policy half in two network namespaces.

The robot half (`run --only robot`: the simulated ALOHA rig, its three cameras, the clock responder) runs
in one namespace, the policy half (`run --only policy`: a tiny checkpoint) in the other, joined by an
emulated link with 10 ms one-way delay (helpers/netns_link.py). DDS discovers by unicast only; neither
namespace has a default route, so nothing can leave the machine. Checked: the policy measures the clock
offset, enables itself, and its commands reach the arms across the link with JPEG images going the other
way; the e-stop from either side stops the arms; no multicast frame crossed the link.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.netns_link import ROOT, Impairment, Namespaces, Probe, available, stop
from helpers.policy_node import remote_rig_file, write_policy

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ARMS = ['left', 'right']
CLI = [sys.executable, '-m', 'bimanual_vla.cli.main']


def wait_until(probe: Probe, predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = probe.ask('count')
        if predicate(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def sent(answer: dict) -> int:
    """Joint commands and trajectories (a remote rig's default) that reached this side's arms so far."""
    return sum(answer['commands'].values()) + sum(answer['trajectories'].values())


def commands_flow(probe: Probe, seconds: float = 1.5) -> int:
    """How many joint commands or trajectories reached this side's arms in the next ``seconds``."""
    before = sent(probe.ask('count'))
    time.sleep(seconds)
    return sent(probe.ask('count')) - before


def commands_resume(probe: Probe, n: int, timeout: float) -> int:
    """Commands that reached the arms within ``timeout`` s, polling until ``n`` have (a loaded machine may
    take a few seconds for a fresh chunk after re-enabling)."""
    before = sent(probe.ask('count'))
    after = wait_until(probe, lambda a: sent(a) - before >= n, timeout)
    return sent(after) - before


@pytest.fixture
def link():
    why = available()
    if why is not None:
        pytest.skip(why)
    with Namespaces(int(os.environ.get('BIMANUAL_TEST_DOMAIN_ID', '90')) % 200) as ns:
        yield ns


def test_policy_in_one_namespace_drives_the_sim_rig_in_another_and_either_estop_stops_it(
    link: Namespaces, node_checkpoint: Path, tmp_path: Path
) -> None:
    domain = int(os.environ.get('ROS_DOMAIN_ID', '0'))
    for ns in (link.robot, link.policy):
        assert not [r for r in link.routes(ns) if r.startswith('default')], link.routes(ns)
    delay = Impairment(delay_ms=10.0, jitter_ms=1.0)
    link.start_bridge(delay, delay, tmp_path / 'link.json')
    rig = remote_rig_file(tmp_path)
    policy = write_policy(tmp_path, node_checkpoint, safety={'max_velocity_rad_s': 2.0, 'enabled_at_start': True})
    logs = {side: (tmp_path / f'{side}.log').open('w') for side in ('robot', 'policy')}
    common = ['--rig', str(rig), '--no-estop-key', '--duration', '240']
    # Half real time and small frames: on a loaded 2-core machine the renderer still keeps the frames
    # younger than the policy's 0.5 s staleness limit (sim time), as in test_eval_sim.
    sim = ['sim_rig.real_time_factor=0.5', 'sim_rig.camera_width=160', 'sim_rig.camera_height=120']
    robot_cmd = [*CLI, 'run', *common, '--only', 'robot', *[a for s in sim for a in ('--set', s)]]
    policy_cmd = [*CLI, 'run', *common, '--only', 'policy', '--policy', str(policy)]
    procs = []
    probes: list[Probe] = []
    try:
        for side, argv in (('robot', robot_cmd), ('policy', policy_cmd)):
            env = link.dds_env(side, domain)
            env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
            where = link.robot if side == 'robot' else link.policy
            procs.append(
                subprocess.Popen(link.exec_argv(where, argv), env=env, stdout=logs[side], stderr=subprocess.STDOUT)
            )
        at_robot = Probe(link, 'robot', ARMS, domain)
        at_policy = Probe(link, 'policy', ARMS, domain)
        probes += [at_robot, at_policy]

        # The policy measures the clock across the link, enables itself, and its commands reach the arms.
        # A remote rig's policy sends trajectories (command_mode's default with a policy_host).
        seen = wait_until(at_robot, lambda a: sum(a['trajectories'].values()) > 10, 150)
        assert sum(seen['trajectories'].values()) > 10, (seen, (tmp_path / 'policy.log').read_text()[-3000:])
        assert sum(seen['commands'].values()) == 0
        assert at_robot.ask('motion 1.0')['moved_rad'] > 1e-3  # the sim's arms follow them

        # E-stop on the robot's side: commands stop (the policy heard it across the link), the arms hold.
        assert at_robot.ask('estop 1') == {'estop': True}
        time.sleep(1.0)
        assert commands_flow(at_robot) == 0
        assert at_robot.ask('motion 1.0')['moved_rad'] < 1e-3

        # Released there, re-enabled from the policy's side: moving again.
        at_robot.ask('estop 0')
        time.sleep(0.5)
        answer = at_policy.ask('enable 1')
        assert answer['success'], answer
        assert commands_resume(at_robot, 6, 60) >= 6

        # E-stop on the policy's side: the sim rig hears it across the link and holds; commands stop.
        assert at_policy.ask('estop 1') == {'estop': True}
        time.sleep(1.0)
        assert commands_flow(at_robot) == 0
        assert at_robot.ask('motion 1.0')['moved_rad'] < 1e-3

        stats = link.bridge_stats()
        for direction in ('to_policy', 'to_robot'):
            assert stats[direction]['ipv4_multicast_frames'] == 0, stats
        # JPEG frames went to the policy: far more bytes that way than commands came back
        assert stats['to_policy']['bytes'] > stats['to_robot']['bytes'], stats
    finally:
        for probe in probes:
            probe.close()
        for proc in reversed(procs):
            stop(proc)
        for log in logs.values():
            log.close()
