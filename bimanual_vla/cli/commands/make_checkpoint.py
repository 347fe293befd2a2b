"""`bimanual-vla make-checkpoint --tiny OUT`: a small random PI0 checkpoint for tests and demos.

The result is a complete checkpoint directory (config, safetensors weights, a
locally built tokenizer, normalisation statistics and joint order for the rig)
that the policy node loads exactly like a real one. It is untrained: its actions
are noise-shaped and its subtask text is word salad.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'make-checkpoint',
        help='create a small random PI0 checkpoint (tests, demos)',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('out', help='directory to create')
    p.add_argument('--tiny', action='store_true', required=True, help='random tiny model (the only kind for now)')
    p.add_argument('--rig', default='aloha_sim', help='rig name or file: joints, cameras, control rate')
    p.add_argument('--hidden', type=int, default=64, help='backbone (Gemma) hidden size')
    p.add_argument('--layers', type=int, default=2, help='layers of backbone and action expert (shared)')
    p.add_argument('--expert-hidden', type=int, default=32, help='action expert hidden size (even)')
    p.add_argument('--vision-hidden', type=int, default=32, help='SigLIP hidden size')
    p.add_argument('--image-size', type=int, default=32, help='model input image size (square)')
    p.add_argument('--patch-size', type=int, default=8, help='SigLIP patch size')
    p.add_argument('--chunk-size', type=int, default=50, help='actions per chunk (H)')
    p.add_argument('--normalization', choices=('mean_std', 'quantile'), default='mean_std')
    p.add_argument('--no-reasoning', action='store_true', help='mark the checkpoint as not writing subtasks')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='replace OUT if it exists')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint
    from bimanual_vla.policy_node.checkpoint import CheckpointError

    for name in ('hidden', 'layers', 'expert_hidden', 'vision_hidden', 'image_size', 'patch_size', 'chunk_size'):
        if getattr(args, name) < 1:
            print(f'error: --{name.replace("_", "-")} must be >= 1', file=sys.stderr)
            return 2
    try:
        out = make_tiny_checkpoint(
            args.out,
            rig=args.rig,
            hidden=args.hidden,
            layers=args.layers,
            expert_hidden=args.expert_hidden,
            vision_hidden=args.vision_hidden,
            image_size=args.image_size,
            patch_size=args.patch_size,
            chunk_size=args.chunk_size,
            normalization=args.normalization,
            reasoning=not args.no_reasoning,
            seed=args.seed,
            force=args.force,
        )
    except (CheckpointError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f'wrote {out} ({size / 1e6:.2f} MB)')
    return 0
