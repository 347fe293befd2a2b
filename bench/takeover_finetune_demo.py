"""Human takeover end to end on the SO-101 twin: run a policy, correct it with scripted leaders, fine-tune.

NOT YET RUN: it takes hours of CPU on this project's 2-core machines (50 twin episodes with a policy
in the loop, a fine-tune, two closed-loop evaluations). docs/teleop.md says so; run it on a machine
with cores to spare and record the result in docs/experiments/ (question, setup, command, result).

What it does (every step a `bimanual-vla` command, as a user would run it):

1. **Base evaluation** (`eval-sim --checkpoint BASE`) on seeds S..S+N-1: which episodes the base
   policy fails, and when (the report's per-episode reward stage).
2. **Takeover collection**: the twin (`run --rig so101_sim --policy P`, the policy enabled), the
   teleop node in takeover mode (`teleop --rig so101_sim --attach --takeover`) and the recorder
   (`record --rig so101_sim`). Per seed, both leaders are `emulate-bus --motion` processes whose
   motion file is the scripted expert's plan for that seed (`sim/so101_expert.py`): still at the
   plan's start pose until ``--takeover-at`` seconds, then the rest of the plan, so the "human" takes
   over there (the leader moves past the takeover threshold), drives the arm through the expert's
   remaining motion, and lets go at the end (held still: handed back). The episode is reset with
   ``sim/reset_seed`` and bracketed by ``record/episode`` markers; the takeovers are recorded on
   ``teleop/intervention``.
3. **Fine-tune** (`train --init BASE --action-source command --interventions-weight W`): the
   followers' commands are the policy's own outside takeovers and the human's inside them; the
   takeover samples weigh W times.
4. **Compare** (`eval-sim --checkpoint FINETUNED`) on the same seeds; a JSON summary of both
   success rates, overall and on the seeds where the base policy failed.

    python bench/takeover_finetune_demo.py --base out/ckpt/so101 --out out/takeover_demo \\
        --episodes 50 --seed 200 --takeover-at 3.0 --interventions-weight 3 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
CLI = str(BIN / 'bimanual-vla')
RIG = 'so101_sim'


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    print('$', ' '.join(args), flush=True)
    return subprocess.run(args, check=True, **kw)


def evaluate(checkpoint: str, out: Path, args: argparse.Namespace) -> dict:
    sh([CLI, 'eval-sim', '--checkpoint', checkpoint, '--rig', RIG, '--out', str(out), '--episodes',
        str(args.episodes), '--seed', str(args.seed), '--no-progress'])  # fmt: skip
    return json.loads((out / 'report.json').read_text())


def leader_motions(seed: int, takeover_at: float, directory: Path) -> dict[str, Path]:
    """Per arm, a motion CSV (joint names): the expert's start pose until `takeover_at`, then its plan."""
    from bimanual_vla.config import load_rig
    from bimanual_vla.drivers.servo.emulated_motion import save_motion_csv
    from bimanual_vla.sim.so101_expert import So101Expert

    rig = load_rig(RIG)
    expert = So101Expert(rig, rig.sim.task, seed)
    out = {}
    for arm, plan in expert.joint_plan.items():
        start = int(round(takeover_at / expert.dt))
        rows = np.concatenate([np.repeat(plan[start : start + 1], 2, axis=0), plan[start:]])
        t = np.concatenate([[0.0, takeover_at], takeover_at + expert.dt * np.arange(1, len(plan) - start + 1)])
        names = rig.arm(arm).joint_names
        out[arm] = save_motion_csv(directory / f'{arm}_{seed}.csv', t, names, rows)
    return out


def collect_takeovers(args: argparse.Namespace, bag: Path) -> None:
    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import Int64, String

    from bimanual_vla import topics
    from bimanual_vla.config import load_rig

    rig = load_rig(RIG)
    background = [
        subprocess.Popen([CLI, 'run', '--rig', RIG, '--policy', args.policy, '--no-estop-key',
                          '--set', f'policy_node.checkpoint={args.base}', '--set', 'policy_node.enabled=true']),
        subprocess.Popen([CLI, 'record', '--rig', RIG, str(bag), '--max-bag-size', '2048']),
    ]  # fmt: skip
    rclpy.init()
    node = Node('takeover_demo')
    episode = node.create_publisher(String, topics.RECORD_EPISODE, topics.RELIABLE_QOS)
    reset = node.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
    time.sleep(20.0)  # the policy's checkpoint loads, the drivers connect
    try:
        for k in range(args.episodes):
            seed = args.seed + k
            motions = leader_motions(seed, args.takeover_at, bag.parent / 'motions')
            leaders = []
            for arm, motion in motions.items():
                leader = next(lead for lead in rig.leaders if lead.follower == arm)
                leaders.append(subprocess.Popen(
                    [CLI, 'emulate-bus', '--protocol', 'feetech', '--ids', '1-6', '--motion', str(motion),
                     '--calibration', str(Path(leader.calibration).expanduser()), '--link', leader.port],
                    stdout=subprocess.PIPE,
                ))  # fmt: skip
            teleop = subprocess.Popen([CLI, 'teleop', '--rig', RIG, '--attach', '--takeover', '--no-estop-key'])
            reset.publish(Int64(data=seed))
            episode.publish(String(data=f'takeover_{seed}'))
            time.sleep(args.episode_s)
            episode.publish(String(data=''))
            for proc in (teleop, *leaders):
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
    finally:
        for proc in background:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        node.destroy_node()
        rclpy.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--base', required=True, help='the checkpoint to correct (trained for so101_sim)')
    p.add_argument('--out', required=True, type=Path)
    p.add_argument('--policy', default='default')
    p.add_argument('--episodes', type=int, default=50)
    p.add_argument('--seed', type=int, default=200)
    p.add_argument('--episode-s', type=float, default=14.0)
    p.add_argument('--takeover-at', type=float, default=3.0, help='seconds into an episode the human takes over')
    p.add_argument('--interventions-weight', type=float, default=3.0)
    p.add_argument('--steps', type=int, default=2000)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    base = evaluate(args.base, args.out / 'eval_base', args)
    bag = args.out / 'takeovers'
    collect_takeovers(args, bag)
    finetuned = args.out / 'finetuned'
    sh([CLI, 'train', '--data', str(bag), '--init', args.base, '--out', str(finetuned), '--rig', RIG,
        '--action-source', 'command', '--interventions-weight', str(args.interventions_weight),
        '--steps', str(args.steps), '--no-progress'])  # fmt: skip
    tuned = evaluate(str(finetuned), args.out / 'eval_finetuned', args)

    def rate(report: dict, seeds: set[int] | None = None) -> float:
        eps = [e for e in report['per_episode'] if seeds is None or e['seed'] in seeds]
        return sum(bool(e['success']) for e in eps) / max(1, len(eps))

    failed = {e['seed'] for e in base['per_episode'] if not e['success']}
    summary = {
        'episodes': args.episodes,
        'base_success': rate(base),
        'finetuned_success': rate(tuned),
        'base_failed_seeds': sorted(failed),
        'finetuned_success_on_base_failures': rate(tuned, failed) if failed else None,
    }
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
