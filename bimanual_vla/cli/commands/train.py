"""`bimanual-vla train`: train or fine-tune a PI0 checkpoint on recorded bags (actions + subtask text)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bimanual_vla.learning.train import TrainConfig
    from bimanual_vla.learning.train_data import CachedSamples


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `train` subcommand's options: one add_argument per option, long because there are many."""
    p = sub.add_parser(
        'train',
        help='train or fine-tune a PI0 checkpoint on recorded bags',
        description='Flow matching on action chunks (pi0 recipe: Beta(1.5, 1) flow time, masked padding) plus '
        'cross-entropy on the subtask text with a block-causal mask, AdamW with warm-up + cosine decay, gradient '
        'clipping. OUT becomes a checkpoint directory VLAPolicy.load reads (normalisation statistics from the '
        'data in bimanual_vla.json); OUT/train_state holds what --resume needs, OUT/training the loss curves.',
    )
    p.add_argument(
        '--data',
        nargs='+',
        metavar='BAG',
        help='bag directories (bimanual-vla collect/record); not needed with --resume',
    )
    p.add_argument('--out', required=True, type=Path, help='checkpoint directory to write')
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        '--init',
        type=Path,
        help="checkpoint to fine-tune (its cameras and shape; its tokenizer, grown by the data's new words)",
    )
    src.add_argument(
        '--tiny-config',
        metavar='KEY=VALUE',
        nargs='*',
        help='train a small PI0 from scratch; optional overrides of hidden, layers, heads, head_dim, '
        'expert_hidden, vision_hidden, vision_layers, image_size, patch_size',
    )
    p.add_argument(
        '--resume', action='store_true', help='continue the run saved in OUT (same settings, more --steps ok)'
    )
    p.add_argument('--rig', default='aloha_sim')
    p.add_argument('--cameras', nargs='+', help='cameras the model sees (default: all of the rig)')
    p.add_argument('--chunk-size', type=int, default=50)
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--lr', type=float, default=3e-4)
    p.add_argument('--min-lr-ratio', type=float, default=0.1, help='cosine decays to this fraction of --lr')
    p.add_argument('--warmup', type=int, default=100)
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--grad-clip', type=float, default=1.0)
    p.add_argument('--subtask-weight', type=float, default=1.0, help='weight of the subtask cross-entropy')
    p.add_argument(
        '--subtask-lookahead',
        type=float,
        default=0.0,
        metavar='S',
        help='train the subtask text on the label S seconds ahead (about latency + half the execution horizon, '
        'e.g. 0.2 for a 10-step horizon at 50 Hz), so it names what the coming chunk does',
    )
    p.add_argument('--flow-samples', type=int, default=1, help='(time, noise) draws per sample on one backbone pass')
    p.add_argument(
        '--state-dropout', type=float, default=0.0, help='probability of hiding the joint state from a sample'
    )
    p.add_argument(
        '--renormalize',
        action='store_true',
        help="with --init: normalise with this data's statistics instead of the checkpoint's (by default a "
        'fine-tune keeps the statistics its weights were trained with)',
    )
    p.add_argument(
        '--start-oversample',
        nargs=2,
        type=float,
        default=(0.0, 1),
        metavar=('SECONDS', 'FACTOR'),
        help='visit the first SECONDS of every episode FACTOR times per epoch',
    )
    p.add_argument(
        '--action-source',
        choices=['leader', 'command', 'commands'],
        default=None,
        help="the action trained on: 'leader' (teleop leaders' positions, leader/<arm>/joint_states) or 'command' "
        "(the followers' arms/<arm>/joint_command; the default for bags without leaders). Bags with both "
        '(record-episodes) need it said',
    )
    p.add_argument(
        '--interventions-weight',
        type=float,
        default=1.0,
        metavar='W',
        help='visit samples inside recorded human takeovers (teleop/intervention) W times per epoch (weight W)',
    )
    p.add_argument(
        '--paraphrase',
        action='store_true',
        help='say each known task in one of its phrasings (learning/tasks.py, TASK_PHRASINGS), drawn per sample',
    )
    p.add_argument('--normalization', choices=['mean_std', 'quantile'], default='mean_std')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--gate-max-velocity',
        type=float,
        help="the policy node's safety.max_velocity_rad_s the demonstrations are checked against "
        "(default: the shipped policy file's); train reports how much of the data moves faster",
    )
    p.add_argument('--save-every', type=int, default=500)
    p.add_argument('--threads', type=int, default=2, help="torch threads (the machine's cores)")
    p.add_argument(
        '--time-base',
        choices=['auto', 'header', 'receive'],
        default='auto',
        help="auto (default): each bag's own (its metadata, else inferred from the stamps); header: message "
        'stamps (sim time); receive: recorder receive times',
    )
    p.add_argument('--default-task', default='', help='task text for bags without policy/task')
    p.add_argument('--cache-dir', type=Path, help='decoded-sample cache (default ~/.cache/bimanual_vla/train)')
    p.add_argument('--skip-episode', nargs='+', default=[], metavar='LABEL', help='episode labels to leave out')
    p.add_argument(
        '--crop',
        nargs='+',
        default=[],
        metavar='CAM=X,Y,W,H',
        help='cut this region (camera pixels) out of a camera before resizing; saved with the checkpoint',
    )
    p.add_argument('--keep-failed', action='store_true', help='also train on episodes collect.json reports as failed')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=run)


def _shape(overrides: list[str] | None):
    from bimanual_vla.learning.train import ModelShape

    shape = ModelShape()
    for item in overrides or []:
        key, _, value = item.partition('=')
        if not hasattr(shape, key) or not value:
            raise SystemExit(f'--tiny-config: expected KEY=VALUE with KEY in {list(shape.__dict__)}, got {item!r}')
        setattr(shape, key, int(value))
    return shape


def _crops(items: list[str]) -> dict[str, list[int]]:
    from bimanual_vla.policy_node.preprocess import crop_box_problem

    crops: dict[str, list[int]] = {}
    for item in items:
        cam, _, box = item.partition('=')
        try:
            values = [int(v) for v in box.split(',')]
        except ValueError:
            values = []
        if not cam or len(values) != 4 or crop_box_problem(tuple(values)):
            raise SystemExit(f'--crop: expected CAM=X,Y,W,H (pixels, width and height > 0), got {item!r}')
        crops[cam] = values
    return crops


def _demonstration_speed(samples, gate_max_velocity: float | None) -> dict:
    """learning/demo_speed.py's report on the cached samples, logged (a warning if over the gate)."""
    import logging

    from bimanual_vla.config import load_policy
    from bimanual_vla.learning.demo_speed import describe, speed_report

    limit = gate_max_velocity if gate_max_velocity is not None else load_policy('default').safety.max_velocity_rad_s
    report = speed_report(
        samples.actions,
        samples.actions_is_pad,
        float(samples.info['rate_hz']),
        samples.joint_names,
        limit,
        phases=samples.subtask_id,
        phase_names=samples.subtasks,
    )
    logging.getLogger('train').log(logging.WARNING if report['joints_over'] else logging.INFO, describe(report))
    return report


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The command line's configuration, or with --resume the saved one (steps and progress from the command line)."""
    from bimanual_vla.learning.train import TRAIN_STATE_DIR, TrainConfig, config_from_json

    out = args.out.expanduser()
    if args.resume:
        state = json.loads((out / TRAIN_STATE_DIR / 'state.json').read_text())
        cfg = config_from_json(state['config'])
        if args.data and [str(Path(d).expanduser()) for d in args.data] != cfg.data:
            raise SystemExit(f"--resume continues on the run's own data {cfg.data}; drop --data or start a new --out")
        cfg.steps = max(cfg.steps, args.steps) if args.steps else cfg.steps
        cfg.progress = not args.no_progress
    else:
        if not args.data:
            raise SystemExit('--data is required (except with --resume)')
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f'{out}: exists and is not empty (use --resume to continue a run, or a new --out)')
        from bimanual_vla.bags.read import BagError
        from bimanual_vla.config import ConfigError
        from bimanual_vla.learning.dataset import choose_action_source

        if not 0 <= args.interventions_weight < 1e3:  # one line, exit status 2 (cli/main.py)
            raise ConfigError(f'--interventions-weight: must be in [0, 1000), got {args.interventions_weight}')
        try:
            action_source = choose_action_source(args.data, args.action_source)
        except (ValueError, BagError) as exc:
            raise ConfigError(str(exc)) from None
        cfg = TrainConfig(
            data=[str(Path(d).expanduser()) for d in args.data],
            out=str(out),
            rig=args.rig,
            init=str(args.init) if args.init else None,
            shape=_shape(args.tiny_config),
            cameras=args.cameras,
            chunk_size=args.chunk_size,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            min_lr_ratio=args.min_lr_ratio,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            subtask_weight=args.subtask_weight,
            subtask_lookahead_s=args.subtask_lookahead,
            flow_samples=args.flow_samples,
            state_dropout=args.state_dropout,
            renormalize=args.renormalize,
            start_oversample_s=float(args.start_oversample[0]),
            start_oversample_factor=int(args.start_oversample[1]),
            action_source=action_source,
            interventions_weight=float(args.interventions_weight),
            paraphrase=bool(args.paraphrase),
            normalization=args.normalization,
            seed=args.seed,
            save_every=args.save_every,
            threads=args.threads,
            time_base=args.time_base,
            default_task=args.default_task,
            cache_dir=str(args.cache_dir) if args.cache_dir else None,
            skip_episodes=list(args.skip_episode),
            keep_failed=bool(args.keep_failed),
            crops=_crops(args.crop),
            progress=not args.no_progress,
        )
    return cfg


def _samples(cfg: TrainConfig) -> CachedSamples:
    """The decoded training samples (cached), at the input geometry of --init's checkpoint if given."""
    from bimanual_vla.learning.train_data import build_cache

    image_size, crops = cfg.shape.image_size, cfg.crops
    if cfg.init:  # the checkpoint's own input geometry
        from bimanual_vla.policy_node.checkpoint import read_metadata

        init_meta = read_metadata(Path(cfg.init).expanduser())
        image_size = init_meta.image_size[0]
        crops = cfg.crops or {c: list(box) for c, box in init_meta.image_crops.items()}
    return build_cache(
        cfg.data,
        cfg.cache_dir or Path('~/.cache/bimanual_vla/train').expanduser(),
        rig=cfg.rig,
        image_size=(image_size, image_size),
        chunk_size=cfg.chunk_size,
        time_base=cfg.time_base,
        default_task=cfg.default_task,
        skip_episodes=cfg.skip_episodes,
        keep_failed=cfg.keep_failed,
        crops=crops,
        progress=cfg.progress,
        action_source=cfg.action_source,
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from bimanual_vla.learning.train import TRAINING_DIR, Trainer

    logging.basicConfig(level=logging.INFO, format='%(message)s')
    cfg = _train_config(args)
    samples = _samples(cfg)
    speed = _demonstration_speed(samples, args.gate_max_velocity)
    trainer = Trainer(cfg, samples, resume=args.resume)
    (trainer.out / TRAINING_DIR).mkdir(parents=True, exist_ok=True)
    (trainer.out / TRAINING_DIR / 'demonstration_speed.json').write_text(json.dumps(speed, indent=2) + '\n')
    print(
        json.dumps(
            {
                'samples': len(samples),
                'episodes': samples.info['episodes'],
                'subtasks': samples.subtasks,
                'parameters': trainer.parameters,
                'start_step': trainer.step,
                'steps': cfg.steps,
                'new_words': trainer.new_words,
                'demonstration_speed': speed,
            }
        ),
        flush=True,
    )

    def log_line(entry: dict) -> None:  # without a progress bar, one JSON line per log interval (for nohup logs)
        if not cfg.progress:
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)

    result = trainer.run(on_log=log_line)
    summary = {k: v for k, v in result.__dict__.items() if k != 'history'}
    print(json.dumps(summary, indent=2))
    return 0
