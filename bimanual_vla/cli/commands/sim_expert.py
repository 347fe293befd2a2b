"""`bimanual-vla sim-expert`: measure the scripted expert's success rate in the MuJoCo sim.

Prints one JSON object (success rate, failed seeds). With ``--sheet``/``--video`` it also
renders the first episode (cameras side by side, the expert's subtask drawn on), which is
the quickest way to see what the expert does.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bimanual_vla.config import RigConfig
    from bimanual_vla.sim.expert import ExpertOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'sim-expert',
        help='run the scripted expert in the MuJoCo sim and print its success rate (JSON)',
        description='Play the scripted expert on N seeded episodes (seeds SEED..SEED+N-1) of a sim task '
        'and print the success rate as JSON. Success: reward stage 4 at the end of the episode.',
    )
    p.add_argument('--task', default='transfer_cube', choices=('transfer_cube', 'insertion'))
    p.add_argument('--episodes', type=int, default=50)
    p.add_argument('--seed', type=int, default=0, help='seed of the first episode')
    p.add_argument('--rig', default='aloha_sim', help='sim rig YAML path or shipped name')
    p.add_argument(
        '--max-speed',
        type=float,
        metavar='RAD_S',
        help='keep every arm joint under this speed (as collect --expert-max-speed)',
    )
    p.add_argument(
        '--approach',
        choices=('joint', 'cartesian'),
        default='joint',
        help='how the right gripper gets above the cube (as collect --expert-approach)',
    )
    p.add_argument(
        '--time-warp',
        type=float,
        default=0.0,
        metavar='W',
        help='stretch each segment of the plan by its own random factor exp(U(-W, W)) (as collect --expert-time-warp)',
    )
    p.add_argument(
        '--meet-jitter',
        type=float,
        default=0.0,
        metavar='M',
        help='move the handover point by up to M metres per axis per episode (as collect --expert-meet-jitter)',
    )
    p.add_argument(
        '--aim-left',
        action='store_true',
        help='aim the left grasp at the measured cube (as collect --expert-aim-left)',
    )
    p.add_argument(
        '--noise',
        type=float,
        default=0.0,
        metavar='RAD',
        help='execute the plan with DART offsets of this std (as collect --expert-noise)',
    )
    p.add_argument('--sheet', metavar='PNG', help='write a contact sheet of the first episode')
    p.add_argument('--video', metavar='MP4', help='write a video of the first episode')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.config import load_rig
    from bimanual_vla.sim.expert import evaluate

    if args.episodes < 1:
        raise SystemExit('--episodes must be >= 1')
    options = expert_options(args)
    rig = load_rig(args.rig)
    if args.sheet or args.video:
        _render_first(rig, args, options)
    t0 = time.perf_counter()
    result = evaluate(rig, args.task, args.episodes, args.seed, options)
    result['wall_s'] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result))
    return 0


def expert_options(args: argparse.Namespace) -> ExpertOptions:
    """The expert's options from the flags; SystemExit naming the option if one is out of range."""
    from bimanual_vla.sim.expert import ExpertOptions

    try:
        options = ExpertOptions(
            noise_rad=args.noise,
            max_joint_speed_rad_s=args.max_speed,
            approach=args.approach,
            time_warp=args.time_warp,
            meet_jitter=args.meet_jitter,
            aim_left=args.aim_left,
        )
        options.check_task(args.task)
    except ValueError as exc:
        raise SystemExit(f'sim-expert: {exc}') from None
    return options


def _render_first(rig: RigConfig, args: argparse.Namespace, options: ExpertOptions) -> None:
    from bimanual_vla.learning.episode_video import EpisodeRecorder
    from bimanual_vla.sim.expert import ScriptedExpert, run_episode
    from bimanual_vla.sim.scene import SceneRenderer, SimScene, rig_cameras

    scene = SimScene(rig, task=args.task, seed=args.seed)
    expert = ScriptedExpert(rig, args.task, args.seed, options=options)
    renderer = SceneRenderer(scene.model, rig_cameras(rig))
    recorder = EpisodeRecorder()
    every = max(1, round(rig.control_rate_hz / 15))

    def on_step(k: int, sc: SimScene, label: str) -> None:
        if k % every == 0:
            lines = [f'subtask: {label}', f't={sc.time:5.2f}s  stage {sc.reward}/4: {sc.stage_name()}']
            recorder.add(renderer.render_all(sc.data), lines)

    try:
        outcome = run_episode(scene, expert, on_step=on_step)
    finally:
        renderer.close()
    if args.sheet:
        recorder.write_contact_sheet(args.sheet)
    if args.video:
        recorder.write_video(args.video, fps=rig.control_rate_hz / every)
    print(
        json.dumps(
            {'rendered_seed': args.seed, 'success': outcome['success'], 'sheet': args.sheet, 'video': args.video}
        )
    )
