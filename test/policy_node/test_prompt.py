"""The task, the subtask override and what goes out on policy/reasoning (policy_node/prompt.py), by value."""

from __future__ import annotations

from bimanual_vla.policy_node.prompt import Prompt


def test_task_and_override_are_stripped_and_a_blank_override_clears_it() -> None:
    p = Prompt('fold')
    assert p.read() == ('fold', None)
    assert p.set_task('  stack the cups \n') == 'stack the cups'
    assert p.set_override(' grasp ') == 'grasp'
    assert p.read() == ('stack the cups', 'grasp')
    assert p.set_override('   ') == ''
    assert p.read() == ('stack the cups', None)


def test_reasoning_goes_out_once_per_text_and_only_from_the_current_timeline() -> None:
    p = Prompt('fold')
    assert not p.reasoning_to_publish('', current=True)
    assert not p.reasoning_to_publish('reach', current=False)
    assert p.published is None
    assert p.reasoning_to_publish('reach', current=True)
    assert not p.reasoning_to_publish('reach', current=True)
    assert p.reasoning_to_publish('grasp', current=True)
    assert p.published == 'grasp'


def test_a_time_jump_retracts_the_published_subtask_so_the_same_text_goes_out_again() -> None:
    p = Prompt('fold')
    assert not p.retract()  # nothing published: nothing to retract
    p.subtask = 'reach'
    assert p.reasoning_to_publish('reach', current=True)
    assert p.retract()
    assert (p.subtask, p.published) == ('', None)
    assert not p.retract()
    assert p.reasoning_to_publish('reach', current=True)
