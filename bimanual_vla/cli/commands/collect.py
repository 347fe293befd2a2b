"""`bimanual-vla collect`: record scripted-expert demonstrations from the simulated rig into a bag."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from bimanual_vla.learning.tasks import TASK_TEXT

if TYPE_CHECKING:
    from bimanual_vla.learning.collect import CollectSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'collect',
        help='record scripted-expert episodes of the simulated rig (training data)',
        description='Run the simulated rig with its scripted expert (faster than real time by default; the SO-101 '
        "twin in real time, behind its real arm drivers) and record cameras, joint states, the expert's commands, "
        'its subtask labels, the task and success through the ROS topics and the bag recorder, one labelled episode '
        "per seed, into one bag directory OUT (plus OUT/collect.json with each episode's outcome).",
    )
    p.add_argument('output', metavar='OUT', type=Path, help='bag directory to create (must not exist)')
    p.add_argument(
        '--task',
        choices=sorted(TASK_TEXT),
        help="default: the rig's sim.task; aloha_sim: transfer_cube | insertion, so101_sim: handover_cube | lift_bar",
    )
    p.add_argument('--episodes', type=int, default=50)
    p.add_argument('--seed', type=int, default=0, help='seed of the first episode (then seed+1, ...)')
    p.add_argument('--rig', default='aloha_sim', help='simulated rig or twin (so101_sim): YAML or shipped name')
    p.add_argument(
        '--real-time-factor',
        type=float,
        help='0 = as fast as possible (default), 1 = real time (the default on a twin, which refuses faster)',
    )
    p.add_argument('--tail-s', type=float, default=1.0, help='sim seconds recorded after the expert finishes')
    p.add_argument('--episode-s', type=float, help='cut every episode after this many sim seconds')
    p.add_argument(
        '--expert-noise',
        type=float,
        default=0.0,
        metavar='RAD',
        help='DART: the expert executes its plan with slow joint offsets of this std (rad; the shipped checkpoint '
        'used 0.01) while the clean plan is recorded as the action, so a cloned policy learns to recover',
    )
    p.add_argument(
        '--expert-max-speed',
        type=float,
        default=0.0,
        metavar='RAD_S',
        help='keep every arm joint of the expert under this speed (0: unlimited, the shipped data); 2 matches the '
        "policy node's default speed gate, so the data holds no motion the gate would clamp",
    )
    p.add_argument(
        '--expert-approach',
        choices=('joint', 'cartesian'),
        default='joint',
        help="how the expert's right gripper gets above the cube: joint (default, no wrist flip) or cartesian "
        "(a straight line through the wrist singularity: the shipped checkpoint's data)",
    )
    p.add_argument(
        '--expert-time-warp',
        type=float,
        default=0.0,
        metavar='W',
        help="stretch each segment of the expert's plan by its own random factor exp(U(-W, W)) per episode (0: the "
        'nominal timeline), so that a cloned policy starts each move when it sees the previous one end, not by '
        'the clock; the labels follow the warped clock',
    )
    p.add_argument(
        '--expert-meet-jitter',
        type=float,
        default=0.0,
        metavar='M',
        help='transfer_cube: move the handover point by up to M metres per axis per episode (0: one fixed point; '
        'at most 0.03), so the cube is handed over somewhere else each time',
    )
    p.add_argument(
        '--expert-aim-left',
        action='store_true',
        help="transfer_cube: aim the left gripper's grasp at the cube where it is measured halfway through the "
        'approach, instead of at the planned point (a cube held off that point is otherwise missed)',
    )
    p.add_argument(
        '--perturb',
        action='append',
        default=[],
        metavar='t=S:KIND',
        help='ask the simulator to knock the object out of the gripper (drop) or move it (move) S sim seconds into '
        'every episode (repeatable); the expert plans the task again from there, its labels going back: '
        'demonstrations of recovery (not on the twin)',
    )
    p.add_argument(
        '--coach',
        action='append',
        default=[],
        metavar='t=S:SUBTASK',
        help="tell the expert to do SUBTASK (one of the task's, as its labels say it) S sim seconds into every "
        "episode (repeatable): it does that subtask's move from where its arms are, labelled so, then the task "
        'again: demonstrations in which the text says what the arms do (not on the twin)',
    )
    p.add_argument(
        '--jitter',
        type=float,
        default=0.0,
        metavar='J',
        help='move each --perturb and --coach time by its own U(-J, J) seconds per episode, seeded by the episode',
    )
    p.add_argument('--compress', action='store_true', help='zstd-compress the MCAP chunks')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.learning.collect import collect

    result = collect(args.output, settings(args))
    summary = result.to_json()
    summary.pop('episodes')
    summary['episodes'] = len(result.episodes)
    summary['failed_seeds'] = [e.seed for e in result.episodes if not e.success]
    print(json.dumps(summary, indent=2))
    return 0


def settings(args: argparse.Namespace) -> CollectSettings:
    """The collection the flags describe; ConfigError (one line, status 2) naming the setting if one is out of range."""
    from bimanual_vla.config import ConfigError
    from bimanual_vla.learning.coaching import parse_coach
    from bimanual_vla.learning.collect import CollectSettings
    from bimanual_vla.learning.recovery import parse_perturb
    from bimanual_vla.sim.expert import ExpertOptions

    try:
        perturb = tuple(parse_perturb(spec) for spec in args.perturb)
        coach = tuple(parse_coach(spec) for spec in args.coach)
        expert = ExpertOptions(
            noise_rad=args.expert_noise,
            max_joint_speed_rad_s=args.expert_max_speed or None,  # 0: unlimited
            approach=args.expert_approach,
            time_warp=args.expert_time_warp,
            meet_jitter=args.expert_meet_jitter,
            aim_left=args.expert_aim_left,
        )
        return CollectSettings(
            task=args.task,
            episodes=args.episodes,
            seed=args.seed,
            rig_name=args.rig,
            real_time_factor=args.real_time_factor,
            tail_s=args.tail_s,
            compress=args.compress,
            episode_s=args.episode_s,
            progress=not args.no_progress,
            expert=expert,
            perturb=perturb,
            coach=coach,
            jitter_s=args.jitter,
        )
    except ValueError as exc:
        raise ConfigError(f'collect: {exc}') from None
