"""Closed-loop evaluation of a checkpoint on the simulated rig, through the real topics.

`sim_rig` (the MuJoCo ALOHA scene, no expert) and `policy_node` (the checkpoint, enabled) run as
`bimanual-vla run --rig aloha_sim` brings them up (the simulator in this process, the policy node in
a process of its own); an observer node on the same graph measures what a person watching the
topics would:

* success: reward stage 4 (transfer_cube: the left gripper holds the cube off the table) at the
  end of the episode, which ends `settle_s` after the stage is first reached or at `max_sim_s`;
  the highest stage reached and the final stage are reported per episode;
* subtask agreement: the scripted expert is planned for the same seed (it is not driving) and its
  label at each sim tick is compared with the policy's subtask in force at that tick (the last
  `policy/reasoning` text), and, per inference, the subtask the model wrote for an observation
  (`policy/markers` text, stamped with the observation time) with the expert's label at that time;
* pace: after each episode the expert is replayed on its seed (physics only) and the policy's
  first-reach time of each reward stage is compared with the expert's;
* aligned agreement: the policy's measured joints are aligned by DTW with the expert's replay
  (`bimanual_vla.learning.alignment`), and each tick's subtask compared with the expert's label
  at the step the arms are at. This tells a wrong text from a different pace. The same aligned
  labels scored against the expert's clock give the ceiling that the episode's pace puts on
  the per-tick agreement, whatever the text says;
* command safety: every `arms/<arm>/joint_command` is checked to be finite and within the rig's
  joint limits;
* one episode (the first) as a video and a contact sheet with the policy's subtask and the
  expert's label drawn on (`bimanual_vla.learning.episode_video`).

Episodes: the policy is disabled (`policy/enable` false), the sim reset to the episode's seed
(`sim/reset_seed`), and the policy enabled again once a camera frame of the new episode has
arrived, so every episode starts from the same state as the expert's. Expert labels are aligned to
sim time since the reset: the policy's start-up latency counts against it.

The parts: eval_observer.py (the observer node), eval_runner.py (EvalSettings, evaluate_closed_loop and
the episodes), eval_report.py (scoring and report.json). This module is their public face.
"""

from __future__ import annotations

from bimanual_vla.learning.eval_observer import EvalObserver, normalise_text
from bimanual_vla.learning.eval_report import EpisodeReport, ExpertReplay, aligned_labels, summarise
from bimanual_vla.learning.eval_runner import EvalSettings, evaluate_closed_loop, replay_expert

__all__ = [
    'EpisodeReport',
    'EvalObserver',
    'EvalSettings',
    'ExpertReplay',
    'aligned_labels',
    'evaluate_closed_loop',
    'normalise_text',
    'replay_expert',
    'summarise',
]
