"""VLAPolicy: equality with transformers' sampler, subtask reasoning, overrides, RTC guidance, bad outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.policy_node import copy_checkpoint, make_noise, make_observation

from bimanual_vla.policy_node.chunking import soft_mask
from bimanual_vla.policy_node.model import (
    ChunkGuide,
    NonFiniteActionError,
    ObservationError,
    SubtaskDrafts,
    VLAPolicy,
    rtc_guidance_weight,
)


def _reference_actions(policy: VLAPolicy, obs, noise: np.ndarray) -> np.ndarray:
    """transformers' own PI0ForConditionalGeneration.sample_actions on our preprocessed inputs."""
    prep = policy.prepare(obs)
    out = policy.model.sample_actions(
        prep.state,
        prep.input_ids,
        prep.pixel_values,
        noise=torch.from_numpy(noise.astype(np.float32))[None],
        attention_mask=prep.attention_mask,
        pixel_attention_mask=prep.pixel_attention_mask,
        num_steps=policy.num_steps,
    )
    return policy.action_norm.unnormalize(out[0, :, : len(policy.joint_names)].double().numpy())


@pytest.mark.slow  # the first inference of the session pays torch's warm-up
def test_sampling_without_reasoning_equals_transformers_sample_actions(tiny_checkpoint: Path) -> None:
    policy = VLAPolicy.load(tiny_checkpoint)  # fresh: no cached subtask
    obs = make_observation(policy, seed=1)
    noise = make_noise(policy, seed=2)
    result = policy.infer(obs, decode_subtask=False, noise=noise)
    assert result.subtask_source == 'disabled' and result.subtask == ''
    assert result.actions.shape == (policy.chunk_size, len(policy.joint_names))
    assert result.actions.dtype == np.float64
    reference = _reference_actions(policy, obs, noise)
    np.testing.assert_allclose(result.actions, reference, rtol=1e-6, atol=1e-7)
    # the comparison can fail: other noise gives other actions
    other = policy.infer(obs, decode_subtask=False, noise=make_noise(policy, seed=3)).actions
    assert np.abs(other - reference).max() > 1e-2
    assert result.stamp == obs.stamp
    assert {'preprocess', 'prefix', 'reasoning', 'flow', 'total'} <= set(result.timings_ms)


def _reference_greedy(policy: VLAPolicy, obs, max_tokens: int) -> list[int]:
    """Greedy decoding without a KV cache: re-run the whole prefix + generated text each step,
    with transformers' own PaliGemma prefix-LM mask (token_type_ids: prefix bidirectional, text causal)."""
    prep = policy.prepare(obs)
    vlm = policy.model.model.vlm
    embed = vlm.get_input_embeddings()
    prefix = policy.model.model.embed_prefix(prep.input_ids, prep.pixel_values, prep.pixel_attention_mask)
    end = policy.tokenizer.token_to_id(policy.metadata.tokens.subtask_end)
    banned = [policy.tokenizer.token_to_id(policy.metadata.tokens.image), 0, 2]
    ids: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            text = embed(torch.tensor([ids], dtype=torch.long)) if ids else prefix[:, :0]
            embeds = torch.cat([prefix, text], dim=1)
            types = torch.cat([torch.zeros(prefix.shape[1]), torch.ones(len(ids))])[None].long()
            hidden = vlm(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                position_ids=torch.arange(embeds.shape[1])[None],
                token_type_ids=types,
            ).last_hidden_state[:, -1]
            logits = hidden @ embed.weight.T
            logits[..., banned] = -math.inf
            ids.append(int(logits.argmax(-1)))
            if ids[-1] == end:
                break
    return ids


def test_reasoning_matches_uncached_greedy_decoding(tiny_policy: VLAPolicy) -> None:
    obs = make_observation(tiny_policy, seed=4)
    result = tiny_policy.infer(obs, decode_subtask=True, noise=make_noise(tiny_policy, 0), max_subtask_tokens=8)
    assert result.subtask_source == 'model'
    expected = _reference_greedy(tiny_policy, obs, 8)
    end = tiny_policy.tokenizer.token_to_id('<eos>')
    assert result.subtask_token_ids[: len(expected)] == expected
    assert result.subtask_token_ids[-1] == end
    assert len(set(expected)) > 2, f'the tiny model should write varied text, got {expected}'
    words = tiny_policy.tokenizer.decode(expected, skip_special_tokens=True).split()
    assert result.subtask.split() == words and result.subtask


def test_subtask_drafts_offer_the_most_recent_continuation_and_stay_bounded() -> None:
    drafts = SubtaskDrafts(capacity=3)
    end = 1
    drafts.add([5, 6, 7, end])
    drafts.add([5, 8, end])
    assert drafts.continuation([5], end) == [8, end]  # the most recent that starts with [5]
    assert drafts.continuation([5, 6], end) == [7, end]
    assert drafts.continuation([9], end) == []
    assert drafts.continuation([5, 8, end], end) == []  # nothing continues past an end marker
    drafts.add([5, 6, 7, end])  # used again: the most recent now
    assert drafts.continuation([5], end) == [6, 7, end]
    for k in range(10):
        drafts.add([20 + k, end])
    assert len(drafts) == 3  # least recently used dropped: bounded over a long run
    assert drafts.continuation([5], end) == []


def test_drafted_decoding_is_exactly_greedy_with_fewer_passes(tiny_checkpoint: Path) -> None:
    """Drafts change how many passes decoding takes, never the text, the cache or the actions."""
    policy = VLAPolicy.load(tiny_checkpoint)
    obs = make_observation(policy, seed=4)
    noise = make_noise(policy, 0)
    plain = policy.infer(obs, noise=noise, max_subtask_tokens=8)
    ids = plain.subtask_token_ids
    reference = _reference_greedy(policy, obs, 8)
    assert len(ids) >= 4 and ids[: len(reference)] == reference
    end = policy.tokenizer.token_to_id('<eos>')

    # a draft that agrees for two tokens and then goes wrong: kept up to there, the rest cropped
    wrong = next(t for t in range(4, 100) if t not in ids)
    policy.drafts = SubtaskDrafts()
    policy.drafts.add([ids[0], ids[1], ids[2], wrong, wrong, end])
    partly = policy.infer(obs, noise=noise, max_subtask_tokens=8)
    assert partly.subtask_token_ids == ids
    np.testing.assert_allclose(partly.actions, plain.actions, rtol=1e-5, atol=1e-6)
    assert policy.last_decode_passes < len(ids)

    # the model's own subtask as the draft: confirmed in one pass after the first token (and one
    # more to append the end marker when the model ran out of budget instead of writing it)
    again = policy.infer(obs, noise=noise, max_subtask_tokens=8)
    assert again.subtask_token_ids == ids and policy.last_decode_passes == (1 if len(ids) <= 8 else 2)
    np.testing.assert_allclose(again.actions, plain.actions, rtol=1e-5, atol=1e-6)

    # one token at a time gives the same ids in one pass per token
    prep = policy.prepare(obs)
    cache, hidden = policy.encode_prefix(prep)
    slow, _ = policy.decode_subtask(cache, prep.attention_mask, hidden, 8, draft=False)
    assert slow == ids and policy.last_decode_passes == len(ids)


def test_reasoning_stops_at_the_end_marker(tiny_checkpoint: Path, tmp_path: Path) -> None:
    policy = VLAPolicy.load(tiny_checkpoint)
    obs = make_observation(policy, seed=4)
    free = policy.infer(obs, max_subtask_tokens=10, noise=make_noise(policy, 0)).subtask_token_ids[:-1]
    # make the marker the first token the model writes at position >= 2 that it did not write before
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    meta = json.loads((ck / 'bimanual_vla.json').read_text())
    meta['tokens']['subtask_end'] = policy.tokenizer.id_to_token(free[k])
    (ck / 'bimanual_vla.json').write_text(json.dumps(meta))
    marked = VLAPolicy.load(ck).infer(obs, max_subtask_tokens=10, noise=make_noise(policy, 0))
    assert marked.subtask_token_ids == free[: k + 1]
    assert marked.subtask.split() == policy.tokenizer.decode(free[:k], skip_special_tokens=True).split()


def test_reasoning_stops_at_the_token_budget(tiny_policy: VLAPolicy) -> None:
    obs = make_observation(tiny_policy, seed=4)
    result = tiny_policy.infer(obs, max_subtask_tokens=3, noise=make_noise(tiny_policy, 0))
    assert len(result.subtask_token_ids) == 4  # 3 decoded + the end marker the expert always sees
    assert result.subtask_token_ids[-1] == tiny_policy.tokenizer.token_to_id('<eos>')
    assert len(result.subtask.split()) == 3


def test_the_subtask_is_handed_over_before_the_flow_steps_run(
    tiny_policy: VLAPolicy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    velocity = tiny_policy._velocity

    def recording_velocity(*args):
        events.append('flow step')
        return velocity(*args)

    monkeypatch.setattr(tiny_policy, '_velocity', recording_velocity)
    result = tiny_policy.infer(
        make_observation(tiny_policy, seed=4),
        noise=make_noise(tiny_policy, 0),
        max_subtask_tokens=4,
        on_subtask=lambda text: events.append(f'subtask {text}'),
    )
    assert result.subtask
    assert events == [f'subtask {result.subtask}'] + ['flow step'] * tiny_policy.num_steps
    # no subtask (reasoning off, nothing cached for this task): nothing to hand over
    tiny_policy.clear_subtask()
    events.clear()
    tiny_policy.infer(make_observation(tiny_policy), decode_subtask=False, on_subtask=events.append)
    assert events == ['flow step'] * tiny_policy.num_steps


@pytest.mark.slow
def test_override_and_cached_subtask(tiny_checkpoint: Path) -> None:
    policy = VLAPolicy.load(tiny_checkpoint)
    obs = make_observation(policy, seed=5)
    noise = make_noise(policy, 6)
    decoded = policy.infer(obs, noise=noise, max_subtask_tokens=6)
    assert decoded.subtask_source == 'model'

    coached = policy.infer(obs, subtask_override='grasp the cube with the left arm', noise=noise)
    assert coached.subtask_source == 'override'
    assert coached.subtask == 'grasp the cube with the left arm'
    again = policy.infer(obs, subtask_override='grasp the cube with the left arm', noise=noise)
    np.testing.assert_array_equal(again.actions, coached.actions)
    other = policy.infer(obs, subtask_override='release the peg', noise=noise)
    assert np.abs(other.actions - coached.actions).max() > 1e-4  # the expert attends to the subtask

    # '' clears the override; decode_subtask=False reuses the model's own last subtask, not the override
    cached = policy.infer(obs, decode_subtask=False, subtask_override='', noise=noise)
    assert cached.subtask_source == 'cached'
    assert cached.subtask == decoded.subtask
    assert cached.subtask_token_ids == decoded.subtask_token_ids
    np.testing.assert_allclose(cached.actions, decoded.actions, rtol=1e-6, atol=1e-7)

    # a subtask belongs to its task: a new task never reuses it, and clear_subtask forgets it
    other_task = make_observation(policy, seed=5, task='insert the peg into the socket')
    assert policy.infer(other_task, decode_subtask=False, noise=noise).subtask_source == 'disabled'
    policy.clear_subtask()
    assert policy.infer(obs, decode_subtask=False, noise=noise).subtask_source == 'disabled'


def test_checkpoint_without_reasoning_never_decodes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    meta = json.loads((ck / 'bimanual_vla.json').read_text())
    (ck / 'bimanual_vla.json').write_text(json.dumps({**meta, 'reasoning': False}))
    policy = VLAPolicy.load(ck)
    obs = make_observation(policy, seed=1)
    noise = make_noise(policy, 2)
    result = policy.infer(obs, decode_subtask=True, noise=noise)
    assert result.subtask_source == 'disabled' and result.subtask_token_ids == []
    np.testing.assert_allclose(result.actions, _reference_actions(policy, obs, noise), rtol=1e-6, atol=1e-7)


def test_guidance_weight_schedule() -> None:
    assert rtc_guidance_weight(0.0, 5.0) == 5.0  # infinite at pure noise: clipped at beta
    assert rtc_guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (0.25 + 0.25) / 0.25
    assert rtc_guidance_weight(0.9, 100.0) == pytest.approx((0.81 + 0.01) / 0.09)
    assert rtc_guidance_weight(0.5, 1.0) == 1.0


@pytest.mark.parametrize('jacobian', ['exact', 'identity'])
def test_rtc_guidance_pulls_the_frozen_steps_onto_the_committed_actions(
    tiny_policy: VLAPolicy,
    jacobian: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    obs = make_observation(tiny_policy, seed=7)
    noise = make_noise(tiny_policy, 8)
    # the "previous chunk": what the policy sampled from other noise, as the executing chunk would be
    previous = tiny_policy.infer(obs, decode_subtask=False, noise=make_noise(tiny_policy, 9)).actions
    frozen, overlap = 5, 25
    committed = previous[:overlap]
    unguided = tiny_policy.infer(obs, decode_subtask=False, noise=noise).actions
    grad_modes: list[bool] = []  # whether each velocity evaluation builds a graph for a backward pass
    velocity = tiny_policy._velocity

    def recording_velocity(*args):
        grad_modes.append(torch.is_grad_enabled())
        return velocity(*args)

    monkeypatch.setattr(tiny_policy, '_velocity', recording_velocity)
    guided = tiny_policy.infer(
        obs,
        decode_subtask=False,
        noise=noise,
        guide=ChunkGuide(actions=committed, weights=soft_mask(frozen, overlap), max_guidance=5.0, jacobian=jacobian),
    ).actions
    assert grad_modes == [jacobian == 'exact'] * tiny_policy.num_steps
    std = np.asarray(tiny_policy.metadata.normalization.actions.std)
    err_unguided = np.abs((unguided[:frozen] - committed[:frozen]) / std).mean()
    err_guided = np.abs((guided[:frozen] - committed[:frozen]) / std).mean()
    assert err_unguided > 0.3, 'different noise should give a visibly different chunk'
    assert err_guided < 0.2 * err_unguided, (err_guided, err_unguided)
    # beyond the overlap nothing pulls: the tail stays a policy sample, not a copy of the guide
    assert np.abs((guided[overlap:] - previous[overlap:]) / std).mean() > 0.1


def test_zero_weights_reproduce_unguided_sampling(tiny_policy: VLAPolicy) -> None:
    obs = make_observation(tiny_policy, seed=7)
    noise = make_noise(tiny_policy, 8)
    unguided = tiny_policy.infer(obs, decode_subtask=False, noise=noise).actions
    committed = unguided[:10] + 0.5
    zero = ChunkGuide(actions=committed, weights=np.zeros(10), max_guidance=5.0)
    guided = tiny_policy.infer(obs, decode_subtask=False, noise=noise, guide=zero).actions
    np.testing.assert_allclose(guided, unguided, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ('actions', 'weights', 'message'),
    [
        (np.zeros((5, 13)), np.ones(5), 'must be'),
        (np.zeros((5, 14)), np.ones(4), 'must be'),
        (np.zeros((51, 14)), np.ones(51), 'k <= 50'),
        (np.zeros((5, 14)), np.full(5, 1.5), r'\[0, 1\]'),
        (np.full((5, 14), np.nan), np.ones(5), 'NaN'),
        (np.zeros((5, 14)), np.ones(5), "jacobian must be one of .*'transpose'"),
    ],
)
def test_bad_guides_are_refused(tiny_policy: VLAPolicy, actions, weights, message: str) -> None:
    jacobian = 'transpose' if 'jacobian' in message else 'exact'
    with pytest.raises(ValueError, match=message):
        tiny_policy.infer(
            make_observation(tiny_policy), decode_subtask=False, guide=ChunkGuide(actions, weights, jacobian=jacobian)
        )


def test_non_finite_state_and_bad_inputs_are_refused(tiny_policy: VLAPolicy) -> None:
    obs = make_observation(tiny_policy)
    obs.state[3] = np.nan
    with pytest.raises(ObservationError, match=r"not finite for joints \['left_forearm_roll'\]"):
        tiny_policy.infer(obs)
    obs = make_observation(tiny_policy)
    obs.state = obs.state[:-1]
    with pytest.raises(ObservationError, match=r'expected \(14,\)'):
        tiny_policy.infer(obs)
    obs = make_observation(tiny_policy)
    obs.images['top'] = obs.images['top'][..., 0]
    with pytest.raises(ObservationError, match="camera 'top'"):
        tiny_policy.infer(obs)
    with pytest.raises(ValueError, match='noise has shape'):
        tiny_policy.infer(make_observation(tiny_policy), noise=np.zeros((50, 14)))


def test_non_finite_model_output_raises(tiny_checkpoint: Path) -> None:
    policy = VLAPolicy.load(tiny_checkpoint)
    with torch.no_grad():
        policy.model.action_out_proj.bias[3] = float('nan')
    with pytest.raises(NonFiniteActionError, match='non-finite'):
        policy.infer(make_observation(policy), decode_subtask=False)


def test_seeded_noise_is_reproducible(tiny_policy: VLAPolicy) -> None:
    obs = make_observation(tiny_policy)
    tiny_policy.seed(11)
    a = tiny_policy.infer(obs, decode_subtask=False).actions
    tiny_policy.seed(11)
    b = tiny_policy.infer(obs, decode_subtask=False).actions
    c = tiny_policy.infer(obs, decode_subtask=False).actions
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_the_subtasks_a_checkpoint_was_trained_on_are_drafts_from_the_start(
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    policy = VLAPolicy.load(tiny_checkpoint)
    obs = make_observation(policy, seed=4)
    ids = policy.infer(obs, noise=make_noise(policy, 0), max_subtask_tokens=8).subtask_token_ids
    assert policy.last_decode_passes >= len(ids) - 1  # nothing to draft from on the first decode
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    meta = json.loads((ck / 'bimanual_vla.json').read_text())
    (ck / 'bimanual_vla.json').write_text(json.dumps({**meta, 'subtasks': [policy.subtask_text(ids)]}))
    primed = VLAPolicy.load(ck)
    assert len(primed.drafts) == 1
    again = primed.infer(obs, noise=make_noise(policy, 0), max_subtask_tokens=8)
    assert again.subtask_token_ids == ids
    assert primed.last_decode_passes == (1 if len(ids) <= 8 else 2)  # the very first decode is drafted
