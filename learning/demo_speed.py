"""How fast the demonstrations move, against the speed the policy node will let the arms move.

The policy node's safety gate moves every joint at most ``safety.max_velocity_rad_s`` (docs/policy_node.md).
A demonstration faster than that teaches the model motions it will never be allowed to make: the gate
clamps them, the arm falls behind the chunk, and the closed loop runs slower than the data. Nothing
fails, so without a number this is easy to miss. The shipped scripted expert is an example: on its
way above the cube it turns `forearm_roll` and `wrist_rotate` by ~2.6 rad in opposite directions in
0.4 s (up to 14 rad/s; the wrist passes near its singularity), seven times the default gate.

`train` prints this report before it starts, so a recipe can be fixed at the data (slower
demonstrations, another IK branch) instead of being discovered in closed loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Speeds within this fraction of the limit count as at the limit. A speed-limited expert moves at
# exactly the limit, and the float32 commands of the decoded data put that a few ppm above it; the
# gate clamps such a command by micro-radians, which changes nothing the arm does.
LIMIT_TOLERANCE = 1e-3


def first_step_speeds(actions: np.ndarray, is_pad: np.ndarray, rate_hz: float) -> np.ndarray:
    """(N, J) speed of each sample's first commanded step, |a[1] - a[0]| * rate; NaN where a[1] is padding.

    One value per sample: samples are evenly spaced in time, so fractions of samples are fractions
    of demonstration time (the overlapping rest of each chunk would count every step H times).
    """
    if actions.ndim != 3 or actions.shape[1] < 2:
        raise ValueError(f'actions must be (samples, steps >= 2, joints), got {actions.shape}')
    if rate_hz <= 0:
        raise ValueError(f'rate_hz must be positive, got {rate_hz}')
    speeds = np.abs(actions[:, 1, :].astype(np.float64) - actions[:, 0, :]) * rate_hz
    speeds[np.asarray(is_pad)[:, 1]] = np.nan
    return speeds


def speed_report(
    actions: np.ndarray,
    is_pad: np.ndarray,
    rate_hz: float,
    joint_names: list[str],
    limit_rad_s: float,
    phases: np.ndarray | None = None,
    phase_names: list[str] | None = None,
) -> dict[str, Any]:
    """Per-joint peak speed and the share of demonstration time above `limit_rad_s`.

    `phases` (per sample, an index into `phase_names`, e.g. the subtask) says where the fast
    motion happens. Joints are reported only if they ever exceed the limit by more than
    `LIMIT_TOLERANCE` of it.
    """
    if limit_rad_s <= 0:
        raise ValueError(f'limit_rad_s must be positive, got {limit_rad_s}')
    speeds = first_step_speeds(actions, is_pad, rate_hz)
    if speeds.shape[1] != len(joint_names):
        raise ValueError(f'{speeds.shape[1]} joints in the actions, {len(joint_names)} names')
    valid = ~np.isnan(speeds).any(axis=1)
    over = np.zeros_like(speeds, dtype=bool)
    over[valid] = speeds[valid] > limit_rad_s * (1.0 + LIMIT_TOLERANCE)
    any_over = over.any(axis=1)
    n = int(valid.sum())
    joints = {}
    for j, name in enumerate(joint_names):
        if over[:, j].any():
            joints[name] = {
                'max_rad_s': round(float(np.nanmax(speeds[:, j])), 3),
                'fraction_over': round(float(over[:, j].sum() / max(n, 1)), 5),
            }
    report: dict[str, Any] = {
        'limit_rad_s': float(limit_rad_s),
        'samples': n,
        'max_rad_s': round(float(np.nanmax(speeds)) if n else 0.0, 3),
        'fraction_over': round(float(any_over.sum() / max(n, 1)), 5),
        'joints_over': joints,
    }
    if phases is not None and phase_names is not None and any_over.any():
        counts = np.bincount(np.asarray(phases)[any_over], minlength=len(phase_names))
        report['phases_over'] = {
            phase_names[i]: round(float(counts[i] / any_over.sum()), 3) for i in np.argsort(-counts) if counts[i]
        }
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for a log: the finding, or that the data is within the limit."""
    if not report['joints_over']:
        return (
            f"demonstrations stay within the policy node's {report['limit_rad_s']:g} rad/s "
            f'(fastest {report["max_rad_s"]:g} rad/s)'
        )
    worst = max(report['joints_over'].items(), key=lambda kv: kv[1]['max_rad_s'])
    where = ''
    if report.get('phases_over'):
        phase, share = next(iter(report['phases_over'].items()))
        where = f", {share:.0%} of it during '{phase}'"
    return (
        f"demonstrations move faster than the policy node's {report['limit_rad_s']:g} rad/s on "
        f'{report["fraction_over"]:.1%} of their time (up to {worst[1]["max_rad_s"]:g} rad/s on {worst[0]}{where}): '
        'the safety gate will clamp those motions and the policy will run slower than the data'
    )
