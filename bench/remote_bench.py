#!/usr/bin/env python3
"""The policy on another computer: the split rig across an emulated link, over delay, jitter and loss.

The robot half (`run --only robot`: the simulated ALOHA rig at real time, three cameras, the clock
responder) runs in one network namespace, the policy half (`run --only policy`, a tiny checkpoint,
`command_mode: trajectory`, RTC) in another, joined by test/helpers/netns_link.py's bridge, which adds
one-way delay with 10 % jitter and random frame loss per direction. Nothing is routed off the
machine and DDS discovers by unicast only. For each link point, measured over a window after the
link settled:

* camera-to-command latency: the policy's frame-to-trajectory time (its frames' stamps corrected by the
  measured clock offset, so in the robot's time) plus how late each trajectory reaches the robot
  (arrival minus its start, the robot's sim clock), p50 and p99 of each;
* chunks (trajectories) lost on the link (sent in the policy's namespace, never seen in the robot's)
  and late (arriving more than 50 ms after their start);
* the jump a trajectory's splice makes in the arm's goal (its value at arrival against the previous
  trajectory's there), against the velocity bound (2 rad/s x 20 ms = 0.04 rad);
* bandwidth per direction (bytes through the bridge), with JPEG and with raw images;
* the same policy with both halves in one namespace (no link), as the baseline.

``--success-seeds N`` adds the closed loop: the shipped checkpoint and default policy (the rig has a
``policy_host``, so trajectory mode unless ``--success-command-mode tick``; JPEG over the link) on N
held-out seeds of transfer_cube (from ``--first-seed``, 1000 as eval-sim) in one namespace and at each
of ``--success-delays`` x ``--success-losses``, each episode started with ``sim/reset_seed`` and
scored by ``sim/success`` within ``--episode-s``; ``--success-diag KEY ...`` keeps policy diagnostics
per episode. Needs a quiet machine: the sim runs at real time.

    sudo .venv/bin/python bench/remote_bench.py --modes --success-seeds 20   # the closed loop alone

    sudo .venv/bin/python bench/remote_bench.py [--window 20] [--settle 5] [--out result.json]

Needs root and `ip netns` (prints a JSON skip reason otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'test')]

from helpers.netns_link import Impairment, Namespaces, Probe, available, stop  # noqa: E402
from helpers.policy_node import remote_rig_file  # noqa: E402

ARMS = ['left', 'right']
CLI = [sys.executable, '-m', 'bimanual_vla.cli.main']
STEP_BOUND_RAD = 2.0 * 0.02  # the policy's max velocity x the control period
LATE_S = 0.05


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def number(value: object) -> float | None:
    try:
        out = float(value)  # diagnostics values arrive as text
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else round(out, 2)


def setup_files(tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    from bimanual_vla.cli.main import main as cli

    ckpt = tmp / 'tiny'
    assert cli(['make-checkpoint', '--tiny', str(ckpt), '--rig', 'aloha_sim', '--chunk-size', '50']) == 0
    rig_path = remote_rig_file(tmp)
    policy = {
        'checkpoint': str(ckpt),
        'task': 'transfer the cube to the left arm',
        'reasoning': {'enabled': False},
        'inference': {'num_steps': 5, 'execution_horizon': 10, 'chunking': 'rtc', 'torch_threads': 1},
        'staleness': {'camera_max_age_s': 0.5, 'joint_max_age_s': 0.3},
        'safety': {'max_velocity_rad_s': 2.0, 'enabled_at_start': True},
    }
    policy_path = tmp / 'policy.yaml'
    policy_path.write_text(yaml.safe_dump(policy))
    return rig_path, policy_path


class Session:
    """The robot half and the policy half running (split across the namespaces, or both in the robot's)."""

    def __init__(
        self,
        ns: Namespaces,
        rig: Path,
        policy: Path | str,
        transport: str,
        split: bool,
        domain: int,
        tmp: Path,
        closed_loop: bool = False,
        command_mode: str = 'default',
    ):
        self.ns, self.procs, self.logs = ns, [], []
        self.diag_keys: list[str] = []
        common = ['--rig', str(rig), '--no-estop-key', '--duration', '3600']
        sim = ['sim_rig.real_time_factor=1.0']
        sim += [] if closed_loop else ['sim_rig.camera_width=160', 'sim_rig.camera_height=120']
        # The sim's clock reaches the policy over the link: its offset is the link's delay, up to ~70 ms here.
        pol = [f'policy_node.image_transport={transport}', 'policy_node.max_clock_offset_s=0.2']
        # the shipped default policy starts disabled; here it enables itself once the clock offset is measured
        pol += ['policy_node.enabled=true'] if closed_loop else []
        if not closed_loop or command_mode != 'default':  # default: the rig's (trajectory: it has a policy_host)
            pol += [f'policy_node.command_mode={"trajectory" if not closed_loop else command_mode}']
        robot = [*CLI, 'run', *common, '--only', 'robot', *[a for s in sim for a in ('--set', s)]]
        policy_cmd = [*CLI, 'run', *common, '--only', 'policy', '--policy', str(policy)]
        policy_cmd += [a for s in pol for a in ('--set', s)]
        sides = (('robot', ns.robot, robot), ('policy', ns.policy if split else ns.robot, policy_cmd))
        for side, where, argv in sides:
            env = ns.dds_env(side if split else 'robot', domain)
            env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
            log = (tmp / f'{side}_{transport}_{"split" if split else "local"}.log').open('w')
            self.logs.append(log)
            proc = subprocess.Popen(ns.exec_argv(where, argv), env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
        self.at_robot = Probe(ns, 'robot', ARMS, domain, sim_time=True)
        self.at_policy = Probe(ns, 'policy' if split else 'robot', ARMS, domain, sim_time=True)

    def wait_running(self, timeout: float, key: str = 'trajectories') -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(self.at_robot.ask('count')[key].values()) > 10:
                return True
            time.sleep(1.0)
        return False

    def episodes(self, seeds: list[int], episode_s: float) -> list[dict]:
        """Each seed's episode (``sim/reset_seed``) scored by ``sim/success`` within ``episode_s`` of sim time."""
        out = []
        for seed in seeds:
            self.at_robot.ask(f'episode {seed}')
            time.sleep(1.0)
            start = self.at_robot.ask('success')['sim_time']
            result = {'seed': seed, 'success': False, 'sim_s': None}
            deadline = time.monotonic() + 4 * episode_s  # wall-clock guard for a slow sim
            while time.monotonic() < deadline:
                answer = self.at_robot.ask('success')
                if answer['success']:
                    result.update(success=True, sim_s=round(answer['sim_time'] - start, 1))
                    break
                if answer['sim_time'] - start > episode_s:
                    break
                time.sleep(0.5)
            if self.diag_keys:
                diag = self.at_policy.ask('diag')
                result['policy'] = {k: diag.get(k) for k in self.diag_keys} if self.diag_keys != ['*'] else diag
            out.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        return out

    def close(self) -> None:
        for probe in (self.at_robot, self.at_policy):
            probe.close()
        for proc in reversed(self.procs):
            stop(proc)
        for log in self.logs:
            log.close()


def measure(
    session: Session, window: float, stats_before: dict | None, stats_after_fn, dump: Path | None = None
) -> dict:
    session.at_robot.ask('reset')
    sent0 = sum(session.at_policy.ask('count')['trajectories'].values())
    got0 = sum(session.at_robot.ask('count')['trajectories'].values())
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    sent = sum(session.at_policy.ask('count')['trajectories'].values()) - sent0
    got = sum(session.at_robot.ask('count')['trajectories'].values()) - got0
    received = session.at_robot.ask('trajectories')['received']
    diag = session.at_policy.ask('diag')
    if dump is not None:  # every trajectory's lateness and splice jump, for a closer look
        dump.write_text(json.dumps(received))
    late = [r['late_s'] * 1e3 for r in received]
    jumps = [r['jump_rad'] for r in received if r['jump_rad'] is not None]
    out = {
        'trajectories_sent': sent,
        'trajectories_received': got,
        'trajectories_lost': max(0, sent - got),
        'trajectory_arrival_after_start_ms_p50': pct(late, 50),
        'trajectory_arrival_after_start_ms_p99': pct(late, 99),
        f'trajectories_late_over_{int(LATE_S * 1e3)}ms': sum(1 for x in late if x > LATE_S * 1e3),
        'splice_jump_rad_max': round(max(jumps), 4) if jumps else None,
        'splice_jump_rad_p99': pct(jumps, 99),
        'splice_jump_bound_rad': STEP_BOUND_RAD,
        'splice_jumps_over_bound': sum(1 for j in jumps if j > STEP_BOUND_RAD + 1e-6),  # not float noise at it
        'frame_to_trajectory_ms_p50': number(diag.get('frame_to_command_ms_p50')),
        'frame_to_trajectory_ms_p99': number(diag.get('frame_to_command_ms_p99')),
        'inference_ms_p50': number(diag.get('inference_ms_p50')),
        'rtc_delay_steps_planned': number(diag.get('rtc_delay_steps_planned')),
        'link_delay_ms_estimate': number(diag.get('link_delay_ms')),
        'clock_offset_ms': number(diag.get('clock_offset_ms')),
        'clock_round_trip_ms_p50': number(diag.get('clock_round_trip_ms_p50')),
        'policy_enabled': diag.get('enabled'),
        'chunks_refused_late': number(diag.get('chunks_refused_late')),
        'control_period_ms_p99': number(diag.get('control_period_ms_p99')),
        'control_period_ms_max': number(diag.get('control_period_ms_max')),
        'velocity_clamps_total': number(diag.get('velocity_clamps')),
        'starved_ticks_total': number(diag.get('starved_ticks')),
        'window_s': round(elapsed, 1),
    }
    p50a, p50b = out['frame_to_trajectory_ms_p50'], out['trajectory_arrival_after_start_ms_p50']
    p99a, p99b = out['frame_to_trajectory_ms_p99'], out['trajectory_arrival_after_start_ms_p99']
    out['camera_to_command_ms_p50'] = round(p50a + p50b, 1) if None not in (p50a, p50b) else None
    out['camera_to_command_ms_p99_bound'] = round(p99a + p99b, 1) if None not in (p99a, p99b) else None
    if stats_before is not None:
        after = stats_after_fn()
        dt = after['elapsed_s'] - stats_before['elapsed_s']
        for direction in ('to_policy', 'to_robot'):
            moved = after[direction]['bytes'] - stats_before[direction]['bytes']
            out[f'mbit_s_{direction}'] = round(moved * 8 / max(dt, 1e-6) / 1e6, 3)
            out[f'ipv4_multicast_frames_{direction}'] = after[direction]['ipv4_multicast_frames']
    return out


def run(args: argparse.Namespace) -> dict:
    domain = int(os.environ.get('ROS_DOMAIN_ID', '0'))
    tmp = Path(tempfile.mkdtemp(prefix='remote_bench_'))
    rig, policy = setup_files(tmp, args)
    result: dict = {
        'benchmark': 'remote_bench',
        'setup': 'aloha_sim at real time, 3 cameras 160x120 @ 15 fps, tiny checkpoint (chunk 50 @ 50 Hz, 5 flow '
        'steps, execution horizon 10, RTC), command_mode trajectory; robot and policy halves in two network '
        'namespaces joined by a user-space bridge (MTU 9000); jitter = 10 % of the delay, uniform',
        'window_s': args.window,
        'settle_s': args.settle,
        'machine': {'cpus': os.cpu_count(), 'loadavg_1min_at_start': round(os.getloadavg()[0], 2)},
        'points': [],
        'logs': str(tmp),
    }
    with Namespaces(args.ident) as ns:
        if args.success_seeds:
            result['closed_loop'] = closed_loop(ns, rig, domain, tmp, args)
        if 'local' in args.modes:  # baseline: both halves in one namespace, no link
            session = Session(ns, rig, policy, 'raw', split=False, domain=domain, tmp=tmp)
            try:
                ok = session.wait_running(args.start_timeout)
                time.sleep(args.settle)
                point = {'transport': 'raw (shared memory)', 'link': 'none (one namespace)', 'running': ok}
                point.update(measure(session, args.window, None, None))
                result['points'].append(point)
                print(json.dumps(point), file=sys.stderr, flush=True)
            finally:
                session.close()
        for transport in [m for m in args.modes if m != 'local']:
            ns.start_bridge(Impairment(), Impairment(), tmp / 'link.json')
            session = Session(ns, rig, policy, transport, split=True, domain=domain, tmp=tmp)
            try:
                ok = session.wait_running(args.start_timeout)
                points = [(d, loss) for d in args.delays for loss in args.losses]
                if transport == 'raw':
                    points = [p for p in points if p[1] == 0.0]  # bandwidth is the question: no loss sweep
                for delay, loss in points:
                    imp = Impairment(delay_ms=delay, jitter_ms=0.1 * delay, loss=loss)
                    stats_file = tmp / f'link_{transport}_{delay}_{loss}.json'
                    ns.start_bridge(imp, imp, stats_file)
                    time.sleep(args.settle)
                    before = ns.bridge_stats()
                    point = {
                        'transport': transport,
                        'one_way_delay_ms': delay,
                        'jitter_ms': round(0.1 * delay, 1),
                        'loss': loss,
                        'running': ok,
                    }
                    dump = tmp / f'trajectories_{transport}_{delay}_{loss}.json'
                    point.update(measure(session, args.window, before, ns.bridge_stats, dump))
                    result['points'].append(point)
                    print(json.dumps(point), file=sys.stderr, flush=True)
            finally:
                session.close()
                ns.stop_bridge()
    return result


def closed_loop(ns: Namespaces, rig: Path, domain: int, tmp: Path, args: argparse.Namespace) -> list[dict]:
    """The shipped checkpoint's default policy on held-out seeds, in one namespace and across the link.

    One session across the link serves every (delay, loss) point: the bridge is restarted with the
    point's impairment and given ``--settle`` seconds before the point's first episode."""
    seeds = list(range(args.first_seed, args.first_seed + args.success_seeds))
    mode = args.success_command_mode
    key = 'commands' if mode == 'tick' else 'trajectories'  # the split rig has a policy_host: trajectory
    runs = []

    def run_point(session: Session, ok: bool, link: str, images: str) -> None:
        episodes = session.episodes(seeds, args.episode_s) if ok else []
        successes = sum(e['success'] for e in episodes)
        runs.append(
            {'link': link, 'images': images, 'command_mode': mode, 'running': ok, 'successes': successes,
             'episodes': episodes}
        )  # fmt: skip
        print(json.dumps({'link': link, 'successes': successes, 'of': len(seeds)}), file=sys.stderr, flush=True)

    if not args.no_success_local:
        transport = args.success_local_images
        session = Session(ns, rig, 'default', transport, False, domain, tmp, closed_loop=True, command_mode=mode)
        session.diag_keys = args.success_diag
        try:
            ok = session.wait_running(args.start_timeout, key=key)
            run_point(session, ok, 'none (one namespace)', 'JPEG' if transport == 'compressed' else 'raw')
        finally:
            session.close()
    points = [(d, loss) for d in args.success_delays for loss in args.success_losses]
    if not points:
        return runs
    ns.start_bridge(Impairment(), Impairment(), tmp / 'link_success_start.json')
    transport = args.success_images
    session = Session(ns, rig, 'default', transport, True, domain, tmp, closed_loop=True, command_mode=mode)
    session.diag_keys = args.success_diag
    try:
        ok = session.wait_running(args.start_timeout, key=key)
        for delay, loss in points:
            imp = Impairment(delay_ms=delay, jitter_ms=0.1 * delay, loss=loss)
            ns.start_bridge(imp, imp, tmp / f'link_success_{delay:g}_{loss:g}.json')
            time.sleep(args.settle)
            link = f'{delay:g} ms one way, 10 % jitter, {loss:.0%} loss'
            run_point(session, ok, link, 'JPEG' if transport == 'compressed' else 'raw')
    finally:
        session.close()
        ns.stop_bridge()
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--window', type=float, default=20.0, help='seconds measured per point')
    parser.add_argument('--settle', type=float, default=5.0, help='seconds after changing the link before measuring')
    parser.add_argument('--delays', type=float, nargs='+', default=[0.0, 10.0, 30.0, 60.0], help='one-way, ms')
    parser.add_argument('--losses', type=float, nargs='+', default=[0.0, 0.01, 0.05], help='fraction per frame')
    parser.add_argument('--modes', nargs='*', default=['local', 'compressed', 'raw'], help='none: closed loop only')
    parser.add_argument('--start-timeout', type=float, default=240.0)
    parser.add_argument('--ident', type=int, default=int(os.environ.get('BIMANUAL_TEST_DOMAIN_ID', '90')) % 200)
    parser.add_argument('--out', default='', help='also write the JSON here')
    parser.add_argument('--success-seeds', type=int, default=0, help='closed-loop smoke: seeds per point (0: none)')
    parser.add_argument(
        '--first-seed', type=int, default=1000, help='first closed-loop seed (eval-sim holds out 1000 on)'
    )
    parser.add_argument(
        '--success-images', choices=('compressed', 'raw'), default='compressed', help='closed loop across the link'
    )
    parser.add_argument(
        '--success-local-images', choices=('compressed', 'raw'), default='raw', help='closed loop in one namespace'
    )
    parser.add_argument(
        '--no-success-local', action='store_true', help='closed loop across the link only (no one-namespace run)'
    )
    parser.add_argument(
        '--success-diag', nargs='*', default=[], metavar='KEY', help="policy diagnostics kept per episode ('*': all)"
    )
    parser.add_argument(
        '--success-command-mode',
        choices=('default', 'tick', 'trajectory'),
        default='default',
        help="the policy's command_mode (default: the rig's, trajectory for a policy_host)",
    )
    parser.add_argument(
        '--success-losses', type=float, nargs='+', default=[0.0], help='closed loop: loss fractions at each delay'
    )
    parser.add_argument('--success-delays', type=float, nargs='+', default=[10.0, 30.0, 60.0], help='one-way, ms')
    parser.add_argument('--episode-s', type=float, default=12.0, help='sim seconds an episode may take (eval-sim: 12)')
    args = parser.parse_args()
    why = available()
    if why is not None:
        print(json.dumps({'benchmark': 'remote_bench', 'skipped': why}))
        return 0
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('MUJOCO_GL', 'egl')
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
