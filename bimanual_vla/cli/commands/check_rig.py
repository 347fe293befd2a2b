"""`bimanual-vla check-rig FILE...`: validate rig files and print what they describe."""

from __future__ import annotations

import argparse
import sys

from bimanual_vla.config import ConfigError, check_rig_files, load_rig, resolve_rig_path, rig_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'check-rig',
        help='validate rig YAML files and print a summary',
        description='Validate rig files (paths or shipped rig names such as so101_bimanual). '
        'Exit status 2 if any file is invalid or names a URDF that does not exist; each problem names the file '
        'and the field.',
    )
    p.add_argument('rigs', nargs='+', metavar='FILE', help='rig YAML path or shipped rig name')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = 0
    for rig in args.rigs:
        try:
            config = load_rig(rig)
            check_rig_files(config, resolve_rig_path(rig))
            print(rig_summary(config))
        except ConfigError as exc:
            print(f'error: {exc}', file=sys.stderr)
            status = 2
    return status
