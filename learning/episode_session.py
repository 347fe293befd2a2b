"""The ``record-episodes`` workflow as a state machine, without ROS: what to do when, given times and keys.

A session records ``episodes`` demonstrations as ``lerobot-record`` does: a countdown, then one
episode of ``episode_s`` after another, each followed by a reset period of ``reset_s`` (none after
the last). The operator's actions (terminal keys, the ``record/control`` topic, a foot pedal):

* ``next``: ends the episode now (it is kept), or ends the countdown or reset period early;
* ``rerecord``: during an episode, ends and discards it; during the reset period after one,
  discards that one. Either way a reset period follows and the same episode number is recorded
  again, as a new take (label ``episode_003_take2``);
* ``stop``: ends the session; an episode under way is ended and kept (as lerobot-record does).

Nothing is deleted: every take stays in the bag, and a discarded one is marked with a
``record/discard`` message after its end marker (:mod:`bimanual_vla.bags.episodes`), which
training and export skip. :meth:`EpisodeSession.tick` and :meth:`EpisodeSession.act` return the
:class:`Step` s to carry out in order: ``start`` (publish the label on ``record/episode``), ``end``
(publish ``''``), ``discard`` (publish on ``record/discard``), ``prompt`` (say it), ``done``.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTDOWN, EPISODE, RESET, DONE = 'countdown', 'episode', 'reset', 'done'
NEXT, RERECORD, STOP = 'next', 'rerecord', 'stop'


@dataclass(frozen=True)
class Step:
    kind: str  # start | end | discard | prompt | done
    text: str = ''  # the label (start, end, discard) or the prompt


def episode_label(index: int, take: int) -> str:
    return f'episode_{index:03d}' if take <= 1 else f'episode_{index:03d}_take{take}'


class EpisodeSession:
    """Phases, labels and operator actions of one recording session; times in seconds, passed in."""

    def __init__(self, episodes: int, episode_s: float, reset_s: float, countdown_s: float = 3.0) -> None:
        if episodes < 1:
            raise ValueError(f'--episodes must be >= 1, got {episodes}')
        for name, value in (('--episode-s', episode_s), ('--reset-s', reset_s), ('--countdown-s', countdown_s)):
            if not (value >= 0 and value < 1e6) or (name == '--episode-s' and value <= 0):
                raise ValueError(f'{name} must be {"> 0" if name == "--episode-s" else ">= 0"} s, got {value}')
        self.episodes, self.episode_s, self.reset_s, self.countdown_s = episodes, episode_s, reset_s, countdown_s
        self.phase = COUNTDOWN
        self.phase_end = 0.0
        self.index = 0  # the episode number being (or next to be) recorded
        self.take = 1
        self.kept: list[str] = []  # labels of the episodes kept, in order
        self.discarded: list[str] = []
        self.label = ''  # the episode under way (or the last one, during its reset period)
        self._last_ended = ''  # the episode the reset period follows ('' after a discard)
        self.stopped_by: str = ''

    # ------------------------------------------------------------ progress

    def start(self, now: float) -> list[Step]:
        self.phase, self.phase_end = COUNTDOWN, now + self.countdown_s
        return [
            Step('prompt', f'Recording {self.episodes} episodes. Get ready: the first starts in {self.countdown_s:g} s')
        ]

    def time_left(self, now: float) -> float:
        return max(0.0, self.phase_end - now) if self.phase != DONE else 0.0

    def tick(self, now: float) -> list[Step]:
        """Phase changes due at ``now``."""
        if self.phase == DONE or now < self.phase_end:
            return []
        if self.phase in (COUNTDOWN, RESET):
            return self._begin(now)
        return self._finish(now)

    def act(self, action: str, now: float, source: str = '') -> list[Step]:
        """An operator action (``next``, ``rerecord``, ``stop``) at ``now``."""
        if self.phase == DONE:
            return []
        if action == STOP:
            steps = self._end_episode() if self.phase == EPISODE else []
            self.stopped_by = source or 'stop'
            return [*steps, *self._done(f'Stopped ({self.stopped_by}): {len(self.kept)} episodes kept')]
        if action == NEXT:
            return self._finish(now) if self.phase == EPISODE else self._begin(now)
        if action == RERECORD:
            if self.phase == EPISODE:
                steps = [*self._end_episode(), Step('discard', self.label)]
                self.kept.remove(self.label)
                self.discarded.append(self.label)
                return steps + self._reset(now, f'Re-recording episode {self.index + 1}: reset the scene')
            if self.phase == RESET and self._last_ended:
                label = self._last_ended
                self.kept.remove(label)
                self.discarded.append(label)
                self.index -= 1
                self._last_ended = ''
                base = episode_label(self.index, 1)
                self.take = 1 + sum(1 for d in self.discarded if d == base or d.startswith(base + '_take'))
                return [Step('discard', label), Step('prompt', f'Episode {self.index + 1} discarded: re-recording it')]
            return []
        raise ValueError(f'unknown action {action!r} (next, rerecord, stop)')

    # ------------------------------------------------------------- phases

    def _begin(self, now: float) -> list[Step]:
        self.label = episode_label(self.index, self.take)
        self.phase, self.phase_end = EPISODE, now + self.episode_s
        what = f'Episode {self.index + 1} of {self.episodes}' + (f' (take {self.take})' if self.take > 1 else '')
        return [Step('start', self.label), Step('prompt', f'{what}: go')]

    def _end_episode(self) -> list[Step]:
        self.kept.append(self.label)
        self._last_ended = self.label
        return [Step('end', self.label)]

    def _finish(self, now: float) -> list[Step]:
        """The episode under way ends (time up or ``next``): kept; a reset period or the end follows."""
        steps = self._end_episode()
        self.index += 1
        self.take = 1
        if self.index >= self.episodes:
            return steps + self._done(f'Done: {len(self.kept)} episodes recorded')
        return steps + self._reset(now, f'Episode {self.index} recorded. Reset the scene')

    def _reset(self, now: float, prompt: str) -> list[Step]:
        if self.phase == EPISODE and self.label in self.discarded:
            self.take += 1
            self._last_ended = ''
        self.phase, self.phase_end = RESET, now + self.reset_s
        return [Step('prompt', f'{prompt} ({self.reset_s:g} s)')]

    def _done(self, prompt: str) -> list[Step]:
        self.phase = DONE
        return [Step('prompt', prompt), Step('done')]
