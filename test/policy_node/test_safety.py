"""The command gate: limits, velocity cap, NaN hold, e-stop, enable and freshness, with numbers."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import load_rig
from bimanual_vla.policy_node import safety
from bimanual_vla.policy_node.safety import CommandGate

NAMES = ['left_a', 'left_b']


def gate(enabled: bool = True, max_step: float = 0.1) -> CommandGate:
    return CommandGate(NAMES, np.array([-1.0, 0.0]), np.array([1.0, 0.5]), max_step, enabled=enabled)


def test_first_command_starts_from_measured_and_moves_at_most_one_step() -> None:
    g = gate()
    out = g.step(np.array([0.8, 0.3]), measured=np.array([0.0, 0.25]), inputs_fresh=True)
    assert out.reason == safety.OK and out.slowed and not out.limited
    np.testing.assert_allclose(out.command, [0.1, 0.3])
    # Next tick continues from the last command, not from the (lagging) measurement.
    out = g.step(np.array([0.8, 0.3]), measured=np.array([0.0, 0.25]), inputs_fresh=True)
    np.testing.assert_allclose(out.command, [0.2, 0.3])


def test_targets_are_clipped_to_joint_limits() -> None:
    g = gate(max_step=10.0)
    out = g.step(np.array([3.0, -2.0]), measured=np.zeros(2), inputs_fresh=True)
    assert out.limited
    np.testing.assert_allclose(out.command, [1.0, 0.0])


def test_out_of_limit_measurement_is_brought_back_at_the_max_step() -> None:
    g = gate(max_step=0.1)
    out = g.step(np.array([0.0, 0.2]), measured=np.array([1.5, 0.2]), inputs_fresh=True)
    np.testing.assert_allclose(out.command, [1.4, 0.2])


def test_nan_and_inf_hold_the_last_safe_command_and_are_counted() -> None:
    g = gate()
    first = g.step(np.array([0.05, 0.1]), measured=np.zeros(2), inputs_fresh=True).command
    for bad in (np.array([np.nan, 0.1]), np.array([0.0, np.inf]), np.array([0.0])):
        out = g.step(bad, measured=np.zeros(2), inputs_fresh=True)
        assert out.reason == safety.HELD_NONFINITE
        np.testing.assert_array_equal(out.command, first)
    assert g.counters.nonfinite_rejected == 3


def test_nan_before_any_safe_command_sends_nothing() -> None:
    g = gate()
    out = g.step(np.array([np.nan, 0.0]), measured=np.zeros(2), inputs_fresh=True)
    assert out.command is None and out.reason == safety.REJECTED_NONFINITE
    assert g.counters.nonfinite_rejected == 1 and g.counters.commands == 0


def test_disabled_at_start_and_nothing_sent_until_enabled() -> None:
    g = gate(enabled=False)
    assert g.step(np.zeros(2), measured=np.zeros(2), inputs_fresh=True).reason == safety.DISABLED
    assert g.set_enabled(True) == (True, 'enabled')
    assert g.step(np.zeros(2), measured=np.zeros(2), inputs_fresh=True).command is not None


def test_stale_inputs_send_nothing_and_resume_from_measured() -> None:
    g = gate()
    g.step(np.array([0.1, 0.1]), measured=np.zeros(2), inputs_fresh=True)
    out = g.step(np.array([0.2, 0.1]), measured=np.zeros(2), inputs_fresh=False)
    assert out.command is None and out.reason == safety.STALE
    # The arm was pushed while we waited: resume from where it is, not from the old command.
    out = g.step(np.array([0.9, 0.1]), measured=np.array([-0.5, 0.1]), inputs_fresh=True)
    np.testing.assert_allclose(out.command, [-0.4, 0.1])


def test_estop_blocks_disables_and_refuses_enable_until_released() -> None:
    g = gate()
    g.set_estop(True)
    assert g.step(np.zeros(2), measured=np.zeros(2), inputs_fresh=True).reason == safety.ESTOP
    ok, message = g.set_enabled(True)
    assert not ok and 'e-stop' in message
    g.set_estop(False)
    # Releasing the e-stop does not resume motion by itself.
    assert g.step(np.zeros(2), measured=np.zeros(2), inputs_fresh=True).reason == safety.DISABLED
    assert g.set_enabled(True)[0]
    assert g.step(np.zeros(2), measured=np.zeros(2), inputs_fresh=True).reason == safety.OK
    assert g.counters.blocked == {safety.ESTOP: 1, safety.DISABLED: 1}


def test_no_measurement_no_first_command() -> None:
    g = gate()
    assert g.step(np.zeros(2), measured=None, inputs_fresh=True).reason == safety.NO_REFERENCE
    assert g.step(np.zeros(2), measured=np.array([np.nan, 0]), inputs_fresh=True).reason == safety.NO_REFERENCE
    assert g.step(None, measured=np.zeros(2), inputs_fresh=True).reason == safety.NO_ACTION


def test_from_rig_uses_rig_limits_and_velocity_over_control_rate() -> None:
    rig = load_rig('so101_bimanual')
    names = ['right_gripper', 'left_shoulder_pan']
    g = CommandGate.from_rig(rig, names, max_velocity_rad_s=2.0, enabled=True)
    assert g.max_step.tolist() == pytest.approx([2.0 / 50, 2.0 / 50])
    assert g.lower.tolist() == pytest.approx([-0.174533, -1.91986])
    assert g.upper.tolist() == pytest.approx([1.74533, 1.91986])
    with pytest.raises(ValueError, match='left_elbow'):
        CommandGate.from_rig(rig, ['left_elbow'], max_velocity_rad_s=2.0)


def test_invalid_construction_is_refused() -> None:
    with pytest.raises(ValueError, match='lower < upper'):
        CommandGate(['a'], np.array([1.0]), np.array([0.0]), 0.1)
    with pytest.raises(ValueError, match='max step'):
        CommandGate(['a'], np.array([0.0]), np.array([1.0]), 0.0)
