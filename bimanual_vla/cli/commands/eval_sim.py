"""`bimanual-vla eval-sim`: closed-loop evaluation of a checkpoint on the simulated rig."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bimanual_vla.learning.tasks import TASK_TEXT


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'eval-sim',
        help='closed-loop success rate and subtask agreement of a checkpoint on the simulated rig',
        description='Run sim_rig + policy_node (composed, through the ROS topics) for seeded episodes and write '
        'OUT/report.json (success rate, reward stage per episode, subtask agreement with the scripted expert, '
        'command limit checks) and the first episode as episode.mp4 + contact_sheet.png with the subtasks drawn on.',
    )
    p.add_argument('--checkpoint', type=Path, required=True)
    p.add_argument('--out', type=Path, required=True)
    p.add_argument('--episodes', type=int, default=50)
    p.add_argument('--seed', type=int, default=1000, help='seed of the first episode (then seed+1, ...)')
    p.add_argument(
        '--seeds', type=int, nargs='+', default=(), metavar='SEED',
        help='exactly these seeds, one episode each (instead of --episodes from --seed), e.g. the failures of a run',
    )  # fmt: skip
    p.add_argument(
        '--task',
        choices=sorted(TASK_TEXT),
        help="default: the rig's sim.task; aloha_sim: transfer_cube | insertion, so101_sim: handover_cube | lift_bar",
    )
    p.add_argument(
        '--prompt',
        help="tell the policy this instead of the task's own prompt (a held-out phrasing, another task's prompt)",
    )
    p.add_argument(
        '--coach',
        action='append',
        type=_coach,
        default=[],
        metavar='t=S:SUBTASK',
        help='put SUBTASK on policy/subtask S sim seconds into every episode (repeat for a schedule; an empty '
        "SUBTASK hands back to the model); scored against the expert's motion for it",
    )
    p.add_argument(
        '--perturb',
        action='append',
        type=_perturb,
        default=[],
        metavar='t=S:KIND',
        help='at S sim seconds into every episode knock the object out of the gripper (drop) or put it down '
        'elsewhere (move); reports whether the text went back to an earlier subtask and the episode succeeded',
    )
    p.add_argument('--rig', default='aloha_sim', help='simulated rig or twin (so101_sim): YAML or shipped name')
    p.add_argument('--policy', default='default', help='policy YAML (inference settings) or shipped name')
    p.add_argument('--num-steps', type=int, help="flow steps per chunk (default: the policy file's)")
    p.add_argument('--torch-threads', type=int, default=1, help='inference threads (1 leaves a core to the sim)')
    p.add_argument('--max-sim-s', type=float, default=12.0, help='episode time limit in sim seconds')
    p.add_argument('--settle-s', type=float, default=1.0, help='end an episode this long after success')
    p.add_argument('--real-time-factor', type=float, default=1.0)
    p.add_argument('--video-episodes', type=int, default=1, help='episodes drawn into the video (first N)')
    p.add_argument(
        '--tick-log', action='store_true', help='also write OUT/ticks.jsonl: every tick and inference of every episode'
    )
    p.add_argument(
        '--composed',
        action='store_true',
        help='run policy_node in this process beside the simulator (default: a process of its own, as launched)',
    )
    p.add_argument(
        '--narrate-expert',
        action='store_true',
        help='the scripted expert drives; the policy only writes subtasks (measures the reasoning head alone)',
    )
    p.add_argument(
        '--no-expert-pace',
        action='store_true',
        help='skip replaying the expert on each seed afterwards to compare stage times (~1 s per episode)',
    )
    p.add_argument(
        '--expert-approach',
        choices=('joint', 'cartesian'),
        help='how the scripted expert moves above the cube, for its labels, replay and narration (default: the '
        "checkpoint's training data's, from its metadata, else joint)",
    )
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.bringup.preflight import choose_checkpoint
    from bimanual_vla.config import ConfigError, load_rig
    from bimanual_vla.learning.eval_sim import EvalSettings, evaluate_closed_loop

    # A bad rig, task, policy file or checkpoint: one line naming it, before the simulator starts.
    checkpoint = args.checkpoint.expanduser().resolve()
    choose_checkpoint(load_rig(args.rig), args.policy, str(checkpoint), '--checkpoint')
    try:
        settings = _settings(args, EvalSettings)
    except ValueError as exc:
        raise ConfigError(f'eval-sim: {exc}') from None
    report = evaluate_closed_loop(args.checkpoint, args.out, settings)
    summary = {k: v for k, v in report.items() if k != 'per_episode'}
    print(json.dumps(summary, indent=2))
    return 0


def _settings(args: argparse.Namespace, settings_class: type):
    """EvalSettings from the flags (ValueError for a task or pace the rig cannot run)."""
    return settings_class(
        episodes=args.episodes,
        seed=args.seed,
        task=args.task,
        rig_name=args.rig,
        max_sim_s=args.max_sim_s,
        settle_s=args.settle_s,
        real_time_factor=args.real_time_factor,
        num_steps=args.num_steps,
        torch_threads=args.torch_threads,
        video_episodes=args.video_episodes,
        progress=not args.no_progress,
        policy=args.policy,
        tick_log=args.tick_log,
        policy_process=not args.composed,
        narrate_expert=args.narrate_expert,
        expert_pace=not args.no_expert_pace,
        expert_approach=args.expert_approach,
        seeds=tuple(args.seeds),
        prompt=args.prompt,
        coach=tuple(args.coach),
        perturb=tuple(args.perturb),
    )


def _coach(text: str):
    """argparse type for --coach: a CoachEvent, or one line naming what is wrong."""
    from bimanual_vla.learning.coaching import parse_coach

    try:
        return parse_coach(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _perturb(text: str):
    """argparse type for --perturb: a PerturbEvent, or one line naming what is wrong."""
    from bimanual_vla.learning.recovery import parse_perturb

    try:
        return parse_perturb(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
