"""The ``teleop/intervention`` message text: which arms a human has taken over from the policy.

A contract-level format, because three sibling layers meet on it: the teleop node writes it
(``drivers/teleop``), the policy node reads it to mute those arms (``policy_node/takeover.py``), and
bag readers turn the recorded messages into takeover segments (``bags/episodes.py``). std_msgs/String,
JSON ``{"arms": ["left"], "event": "start", "arm": "left", "reason": "..."}``: ``arms`` is the whole
set under human control after the event (``start``: ``arm`` taken over, ``end``: handed back,
``state``: the initial value). A plain comma-separated list of arm names is accepted too, so
``ros2 topic pub`` can stand in for the teleop node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

START, END, STATE = 'start', 'end', 'state'


def intervention_payload(arms: Iterable[str], event: str = STATE, arm: str = '', reason: str = '') -> str:
    """The message text: the arms under human control after ``event`` of ``arm``."""
    return json.dumps({'arms': sorted(set(arms)), 'event': event, 'arm': arm, 'reason': reason})


def parse_intervention(text: str) -> frozenset[str]:
    """The arms under human control in a message; ValueError if it is not one."""
    text = text.strip()
    if not text:
        return frozenset()
    if text.startswith('{'):
        data = json.loads(text)
        arms = data.get('arms') if isinstance(data, dict) else None
        if not isinstance(arms, list) or not all(isinstance(a, str) for a in arms):
            raise ValueError(f'teleop/intervention: "arms" must be a list of arm names, got {text!r}')
        return frozenset(arms)
    return frozenset(a.strip() for a in text.split(',') if a.strip())
