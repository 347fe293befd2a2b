"""What the policy is told and what it says, without ROS: the task, the coach's subtask, the reasoning.

The node keeps one ``Prompt`` under its lock: ``policy/task`` and ``policy/subtask`` set it, the
inference thread reads it, and ``policy/reasoning`` carries a subtask only when it is news (the
first of its text, on the current timeline). A time jump retracts the one published, so the new
episode's first subtask goes out even when it reads the same.
"""

from __future__ import annotations


class Prompt:
    """The task, the subtask override, the latest decoded subtask and the one last published."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.override: str | None = None  # policy/subtask: the model writes this instead of its own
        self.subtask = ''  # of the latest accepted chunk (diagnostics)
        self.published: str | None = None  # last text on policy/reasoning

    def read(self) -> tuple[str, str | None]:
        """(task, override) for one inference."""
        return self.task, self.override

    def set_task(self, text: str) -> str:
        self.task = text.strip()
        return self.task

    def set_override(self, text: str) -> str:
        """An empty (or blank) text clears the override; returns the text as stored ('' when cleared)."""
        stripped = text.strip()
        self.override = stripped or None
        return stripped

    def reasoning_to_publish(self, text: str, *, current: bool) -> bool:
        """Whether ``text``, just decoded, goes out on policy/reasoning: not empty, not the text last
        published, and ``current`` (decoded on the present timeline). Remembered as published if so."""
        if not text or text == self.published or not current:
            return False
        self.published = text
        return True

    def retract(self) -> bool:
        """Time jumped back: forget the subtask. True when one was published and must be retracted
        (an empty policy/reasoning)."""
        if not self.published:
            return False
        self.subtask, self.published = '', None
        return True
