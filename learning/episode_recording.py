"""``record-episodes`` at run time: the conductor node, the live display, prompts, and the session loop.

The rig (drivers and cameras, or the SO-101 twin), the ``teleop`` node and the recorder
(:class:`~bimanual_vla.bags.record.BagRecorder`, splitting its bag at every episode end) run in this
process, composed as ``bimanual-vla teleop`` composes them. The loop here, on the main thread, runs
:class:`~bimanual_vla.learning.episode_session.EpisodeSession` and carries out its steps through the
:class:`EpisodeConductor` node:

* ``start``: the label on ``record/episode`` (and ``''`` on ``policy/subtask``: each episode starts
  without a subtask label until the operator types one);
* ``end``: ``''`` on ``record/episode``; then the loop waits until the recorder has the episode closed
  and its file listed in the bag's metadata.yaml (``split_on_episode_end``), so an episode whose
  reset period began is on disk whatever happens to the process next;
* ``discard``: ``{"label": ...}`` on ``record/discard``, waited for in the recorder the same way.

Operator actions arrive from the terminal keys, the ``record/control`` topic (``next``, ``rerecord``,
``stop``; any publisher) and an optional evdev pedal, all into one queue. A line typed at the terminal
goes out on ``policy/subtask`` (latched), which the recorder keeps as the subtask label.

The display (a terminal only; otherwise the prompts are printed one per line) shows the phase, the
episode, the time left, the message rate of every recorded topic, the recorder's dropped messages
and the line being typed. Prompts are printed, and spoken with ``spd-say`` or ``espeak`` when asked
and one of them is installed (never required).
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rclpy.node import Node
from std_msgs.msg import String

from bimanual_vla import topics as T
from bimanual_vla.bags.episodes import discard_payload
from bimanual_vla.learning.episode_session import DONE, EPISODE, EpisodeSession, Step
from bimanual_vla.ros_utils import subscribe_from_any_publisher

ACTIONS = ('next', 'rerecord', 'stop')
MARKER_WAIT_S = 5.0


class EpisodeConductor(Node):
    """Publishes the markers, task and subtask; hears ``record/control``. Actions go to ``actions``."""

    def __init__(self, task: str, **kwargs: Any) -> None:
        super().__init__('record_episodes', **kwargs)
        self.actions: queue.Queue[tuple[str, str]] = queue.Queue()
        self.episode_pub = self.create_publisher(String, T.RECORD_EPISODE, T.RELIABLE_QOS)
        self.discard_pub = self.create_publisher(String, T.RECORD_DISCARD, T.RELIABLE_QOS)
        self.task_pub = self.create_publisher(String, T.POLICY_TASK, T.LATCHED_QOS)
        self.subtask_pub = self.create_publisher(String, T.POLICY_SUBTASK, T.LATCHED_QOS)
        self.task_pub.publish(String(data=task))
        subscribe_from_any_publisher(self, String, T.RECORD_CONTROL, self._on_control, latched=False)

    def _on_control(self, msg: String) -> None:
        action = msg.data.strip().lower()
        if action in ACTIONS:
            self.actions.put((action, 'record/control'))
        else:
            self.get_logger().warning(f'record/control: {msg.data!r} is not one of {", ".join(ACTIONS)}')

    def publish_marker(self, label: str) -> None:
        self.episode_pub.publish(String(data=label))

    def publish_discard(self, label: str) -> None:
        self.discard_pub.publish(String(data=discard_payload(label)))

    def publish_subtask(self, text: str) -> None:
        self.subtask_pub.publish(String(data=text))


class Speaker:
    """Says prompts with spd-say or espeak when asked and installed; silently does nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.command = None
        if enabled:
            for name in ('spd-say', 'espeak'):
                if shutil.which(name):
                    self.command = name
                    break

    def say(self, text: str) -> None:
        if self.command is not None:
            subprocess.Popen([self.command, text], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Rates:
    """Messages per second of every recorded topic, from the recorder's counts, over the last second."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] | None = None
        self.rates: dict[str, float] = {}

    def update(self, now: float, counts: dict[str, int]) -> dict[str, float]:
        if self._last is None:
            self._last = (now, dict(counts))
        elif now - self._last[0] >= 1.0:
            then, before = self._last
            self.rates = {t: (c - before.get(t, 0)) / (now - then) for t, c in counts.items()}
            self._last = (now, dict(counts))
        return self.rates


def display_text(session: EpisodeSession, now: float, rates: dict[str, float], dropped: int, line: str) -> str:
    """The live display: phase, episode, time left, rates per topic, dropped messages, the typed subtask."""
    if session.phase == DONE:
        head = f'done: {len(session.kept)} kept, {len(session.discarded)} discarded'
    elif session.phase == EPISODE:
        head = f'RECORDING {session.label}  ({session.index + 1}/{session.episodes})'
    else:
        head = f'{session.phase}  (next: episode {session.index + 1}/{session.episodes})'
    rows = [f'{head}   {session.time_left(now):5.1f} s left   kept {len(session.kept)}   dropped {dropped}']
    rows += [f'  {rate:7.1f} Hz  {topic}' for topic, rate in sorted(rates.items())]
    rows.append('-> next   <- re-record   Esc stop   type a subtask + Enter: ' + line)
    return '\n'.join(rows)


class SessionRunner:
    """The main loop of one session: actions in, steps out through the conductor, the display redrawn."""

    def __init__(
        self,
        session: EpisodeSession,
        conductor: EpisodeConductor,
        recorder: Any,  # BagRecorder: episodes, topic_states, dropped, output
        *,
        out: TextIO = sys.stdout,
        live: bool = False,
        speaker: Speaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session, self.conductor, self.recorder = session, conductor, recorder
        self.out, self.live, self.speaker, self.clock = out, live, speaker or Speaker(False), clock
        self.rates = Rates()
        self.line = ''  # the subtask being typed
        self.problems: list[str] = []
        self._drawn = 0  # lines of the last display

    # inputs, from any thread
    def on_key(self, key: Any) -> None:
        if key.action is not None:
            self.conductor.actions.put((key.action, key.name))
        elif key.name == 'line':
            self.line = ''
            self.conductor.publish_subtask(key.text)
            self.prompt(f'subtask: {key.text!r}' if key.text else 'subtask cleared')
        elif key.name == 'edit':
            self.line = key.text

    def on_action(self, action: str, source: str) -> None:
        self.conductor.actions.put((action, source))

    def prompt(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)
        self.speaker.say(text)

    def run(self, until: Callable[[], bool] = lambda: False) -> EpisodeSession:
        """Run the session to its end (or until ``until()``); returns it."""
        self._wait_for_recorder()
        self._do(self.session.start(self.clock()))
        last_draw = 0.0
        while self.session.phase != DONE and not until():
            now = self.clock()
            try:
                action, source = self.conductor.actions.get(timeout=0.02)
                self._do(self.session.act(action, now, source))
            except queue.Empty:
                pass
            self._do(self.session.tick(self.clock()))
            if self.live and now - last_draw >= 0.25:
                self._draw(now)
                last_draw = now
        return self.session

    def _wait_for_recorder(self) -> None:
        """The recorder hears record/discard and policy/subtask before the first episode (discovery)."""
        deadline = self.clock() + 10.0
        pubs = (self.conductor.discard_pub, self.conductor.subtask_pub, self.conductor.episode_pub)
        while self.clock() < deadline and not all(p.get_subscription_count() for p in pubs):
            time.sleep(0.05)

    def _do(self, steps: list[Step]) -> None:
        for step in steps:
            if step.kind == 'start':
                self.conductor.publish_subtask('')
                self.conductor.publish_marker(step.text)
            elif step.kind == 'end':
                self.conductor.publish_marker('')
                self._wait_closed(step.text)
            elif step.kind == 'discard':
                self._discard(step.text)
            elif step.kind == 'prompt':
                self.prompt(step.text)

    def _wait_closed(self, label: str) -> None:
        """Until the recorder has the episode ended and its file closed and listed (or a problem is noted)."""
        splits = bool(getattr(self.recorder, 'split_at_episode_end', False))
        deadline = self.clock() + MARKER_WAIT_S
        while self.clock() < deadline:
            episodes = self.recorder.episodes
            closed = bool(episodes) and episodes[-1].label == label and episodes[-1].end_ns is not None
            ended = sum(1 for e in episodes if e.end_ns is not None)  # each end closed a file of its own
            if closed and (not splits or _listed_files(Path(self.recorder.output)) >= ended):
                return
            time.sleep(0.01)
        self.problems.append(f'{label}: the recorder did not confirm its end within {MARKER_WAIT_S:g} s')
        self.prompt(f'WARNING: {self.problems[-1]}')

    def _discard(self, label: str) -> None:
        topic = self.recorder.resolve_topic_name(T.RECORD_DISCARD)
        state = self.recorder.topic_states.get(topic)
        before = state.count if state is not None else 0
        self.conductor.publish_discard(label)
        deadline = self.clock() + MARKER_WAIT_S
        while self.clock() < deadline:
            state = self.recorder.topic_states.get(topic)
            if state is not None and state.count > before:
                return
            time.sleep(0.01)
        self.problems.append(f'{label}: the recorder did not confirm the discard within {MARKER_WAIT_S:g} s')
        self.prompt(f'WARNING: {self.problems[-1]}')

    def _draw(self, now: float) -> None:
        counts = {name: s.count for name, s in self.recorder.topic_states.items()}
        text = display_text(self.session, now, self.rates.update(now, counts), self.recorder.dropped, self.line)
        self._clear()
        self.out.write(text + '\n')
        self.out.flush()
        self._drawn = text.count('\n') + 1

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f'\x1b[{self._drawn}F\x1b[J')  # up to the display's first line, erase below
            self._drawn = 0


def _listed_files(bag: Path) -> int:
    """How many closed files the bag's metadata.yaml lists (0 before the first)."""
    import yaml

    try:
        info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return 0
    return len(info.get('relative_file_paths') or [])


def summary(session: EpisodeSession, bag: Path, problems: list[str]) -> str:
    """One JSON line for the end of the session (what the bag holds)."""
    return json.dumps({'bag': str(bag), 'kept': session.kept, 'discarded': session.discarded, 'problems': problems})
