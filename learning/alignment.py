"""Where in a reference motion is the robot? Dynamic time warping of one joint trajectory onto another.

eval-sim scores the policy's subtask text against the scripted expert's labels. Those labels
follow the expert's clock, and a closed-loop policy keeps its own pace: 0.2 s early at a grasp
is a disagreement on the clock even when the text names exactly what the arms are doing. To
tell a wrong text from a different pace, each tick of the policy's episode is matched with the
step of the expert's own run (same seed, measured joints) that it corresponds to, by the
monotone alignment of least total distance (Sakoe & Chiba's DTW). The expert's label at that
step is the label of what the robot is doing.

The alignment is monotone: it cannot follow a retry after a drop back to an earlier phase. It
is open at the end, so an episode that stops early (success) matches a prefix of the expert's.
"""

from __future__ import annotations

import numpy as np


def dtw_align(query: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """For each row of `query` (n, d), the index of the `reference` (m, d) row it aligns with.

    Distance: weighted L1 (`weights`, (d,), e.g. to put gripper metres on the scale of joint
    radians). Both sequences start together; the query may end anywhere in the reference.
    Where one query row spans several reference rows, the last of them is returned (the furthest
    the robot has got). O(n m) time and memory; 600 x 400 steps take ~70 ms.
    """
    query = np.asarray(query, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise ValueError(f'query {query.shape} and reference {reference.shape} must be (n, d) and (m, d)')
    if len(query) == 0 or len(reference) == 0:
        raise ValueError('cannot align an empty trajectory')
    if not (np.all(np.isfinite(query)) and np.all(np.isfinite(reference))):
        raise ValueError('trajectories to align must be finite')
    w = np.ones(query.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    cost = np.abs((query[:, None, :] - reference[None, :, :]) * w).sum(axis=-1)
    n, m = cost.shape
    total = np.empty((n, m))
    total[0] = np.cumsum(cost[0])
    for i in range(1, n):
        # from the row above: stay on the same reference row or advance one
        best = np.minimum(total[i - 1], np.concatenate([[np.inf], total[i - 1, :-1]]))
        # then any run of advances within this row: row[j] = C[j] + min_{k<=j}(best[k] + c[k] - C[k])
        running = np.cumsum(cost[i])
        total[i] = running + np.minimum.accumulate(best + cost[i] - running)
    aligned = np.zeros(n, dtype=np.int64)
    i, j = n - 1, int(np.argmin(total[-1]))
    aligned[i] = j
    while i > 0 or j > 0:
        moves = []
        if i > 0:
            moves.append((total[i - 1, j], i - 1, j))
            if j > 0:
                moves.append((total[i - 1, j - 1], i - 1, j - 1))
        if j > 0:
            moves.append((total[i, j - 1], i, j - 1))
        _, i_next, j_next = min(moves, key=lambda move: move[0])
        if i_next != i:
            aligned[i_next] = j_next  # the first (backwards) visit of a row is its furthest reference step
        i, j = i_next, j_next
    return aligned
