"""Training: block-causal subtask teacher forcing, loss going down, exact resume, loadable output, no pickles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bimanual_vla.learning.train import (
    TRAIN_STATE_DIR,
    BatchMaker,
    ModelShape,
    TrainConfig,
    Trainer,
    compute_loss,
    learning_rate,
    sample_time,
    step_generator,
)

TINY = ModelShape(
    hidden=32, layers=2, heads=2, head_dim=16, expert_hidden=16, vision_hidden=16, vision_layers=1,
    image_size=32, patch_size=16,
)  # fmt: skip


@pytest.fixture(scope='module')
def samples(tmp_path_factory):
    """Two short expert episodes recorded through the topics, decoded into a 32 px sample cache."""
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.learning.train_data import build_cache
    from bimanual_vla.sim.expert import ExpertOptions

    root = tmp_path_factory.mktemp('train')
    # the straight-line approach: its wrist flip is the fast motion the speed report must catch
    expert = ExpertOptions(approach='cartesian')
    collect(root / 'bag', CollectSettings(episodes=2, seed=3, episode_s=1.0, progress=False, expert=expert))
    return build_cache([root / 'bag'], root / 'cache', rig='aloha_sim', image_size=(32, 32), chunk_size=10,
                       keep_failed=True, progress=False)  # fmt: skip


def config(out, **kw) -> TrainConfig:
    base = dict(data=[], out=str(out), shape=TINY, chunk_size=10, steps=3, batch_size=4, lr=3e-3, warmup=2,
                save_every=0, log_every=1, threads=1, progress=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_cache_holds_synchronised_samples(samples):
    assert len(samples) == pytest.approx(2 * 50, abs=8)
    assert samples.cameras == ['top', 'left_wrist', 'right_wrist']
    assert samples.frames['top'].shape[1:] == (32, 32, 3) and samples.frames['top'].dtype == np.uint8
    assert samples.tasks == ['transfer the cube from the right arm to the left arm']
    assert 'move the right gripper above the cube' in samples.subtasks
    # distinct frames only: 15 fps camera, 50 Hz samples
    assert samples.frames['top'].shape[0] < len(samples) / 2
    assert set(np.unique(samples.episode)) == {0, 1}


def test_teacher_forced_subtask_matches_token_by_token_decoding(samples, tmp_path):
    """The block-causal training mask gives each subtask token exactly what inference gives it."""
    from bimanual_vla.policy_node.model import Observation, VLAPolicy

    trainer = Trainer(config(tmp_path / 'ckpt'), samples)
    trainer.save()
    policy = VLAPolicy.load(tmp_path / 'ckpt')
    maker = BatchMaker(samples, policy.tokenizer, policy.metadata, policy.model.config)
    i = int(np.flatnonzero(np.array([len(s) for s in samples.subtasks])[samples.subtask_id] > 0)[0])
    batch = maker(np.array([i]))
    vlm = policy.model.model.vlm
    embeds = policy.model.model.embed_prefix(batch.input_ids, batch.pixel_values, batch.pixel_attention_mask)
    position_ids = batch.attention_mask.cumsum(-1) - 1
    with torch.no_grad():
        causal = vlm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=position_ids,
                     token_type_ids=batch.token_type_ids).last_hidden_state[0]  # fmt: skip
        leaky = vlm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=position_ids,
                    token_type_ids=torch.zeros_like(batch.token_type_ids)).last_hidden_state[0]  # fmt: skip
    images = {
        c: np.ascontiguousarray(samples.frames[c][samples.frame_index[i, k]]) for k, c in enumerate(samples.cameras)
    }
    obs = Observation(images=images, state=samples.state[i].astype(np.float64), task=samples.tasks[0])
    prep = policy.prepare(obs)
    n = prep.input_ids.shape[1]
    assert torch.equal(prep.input_ids[0], batch.input_ids[0, :n])  # same prompt layout as inference
    cache, hidden = policy.encode_prefix(prep)
    mask = prep.attention_mask
    sub = maker.subtask_ids[samples.subtask_id[i]]
    decoded = [hidden]
    for token in sub[:-1]:
        mask, hidden = policy._feed_tokens(cache, mask, [token])  # one token per pass, as decoding without drafts
        decoded.append(hidden)
    decoded = torch.cat(decoded)
    train_side = causal[n - 1 : n - 1 + len(sub)]
    assert torch.allclose(train_side, decoded, atol=1e-5)
    # with PI0's default bidirectional backbone the subtask tokens would read the answer
    assert not torch.allclose(leaky[n - 1 : n - 1 + len(sub)], decoded, atol=1e-3)
    # the loss covers the subtask tokens and the end marker, nothing else
    assert (batch.labels != -100).sum() == len(sub)
    assert batch.labels[0, n - 1 : n - 1 + len(sub)].tolist() == sub


def test_paraphrase_says_the_task_in_each_of_its_phrasings(samples, tmp_path):
    """`--paraphrase`: a sample's prompt is one of its task's phrasings, drawn per step; the checkpoint knows them."""
    from bimanual_vla.learning.tasks import TASK_PHRASINGS
    from bimanual_vla.policy_node.checkpoint import read_metadata

    phrasings = TASK_PHRASINGS['transfer_cube']
    trainer = Trainer(config(tmp_path / 'ckpt', paraphrase=True), samples)
    n_image = len(samples.cameras) * (TINY.image_size // TINY.patch_size) ** 2

    def prompts(batch) -> list[str]:
        out = []
        for row, mask in zip(batch.input_ids, batch.token_type_ids, strict=True):
            ids = row[n_image + 1 : int((mask == 0).sum()) - 1].tolist()  # after the images and <bos>, before "\n"
            out.append(trainer.tokenizer.decode(ids).replace(' ', ''))
        return out

    squash = {p.replace(' ', ''): p for p in phrasings}
    seen = set()
    for step in range(6):
        said = prompts(trainer.batches(np.arange(8), np.random.default_rng([0, step, 30])))
        assert set(said) <= set(squash), said
        seen.update(said)
    assert len(seen) >= 4  # 48 draws from 5 phrasings
    assert set(prompts(trainer.batches(np.arange(8)))) == {phrasings[0].replace(' ', '')}  # no rng: the task itself
    trainer.run()
    assert read_metadata(tmp_path / 'ckpt').tasks == list(phrasings)
    plain = Trainer(config(tmp_path / 'plain'), samples)
    assert len(plain.batches.prompts[0]) == 1 and plain._task_texts() == [phrasings[0]]


def test_fine_tune_grows_the_vocabulary_for_new_words_keeping_every_old_id(samples, tmp_path):
    """`--init` on data with words the checkpoint lacks (other phrasings, a second task): the tokenizer
    gains them at new ids, the embeddings gain rows at the mean of the old ones, the old rows and ids stay."""
    from bimanual_vla.learning.tasks import TASK_PHRASINGS
    from bimanual_vla.policy_node.checkpoint import load_pi0, load_tokenizer, read_metadata
    from bimanual_vla.policy_node.model import Observation, VLAPolicy

    base = tmp_path / 'base'
    Trainer(config(base, steps=1), samples).run()  # one phrasing: 'pass', 'give', 'picks' ... are unknown
    old_tokenizer, old_model = load_tokenizer(base), load_pi0(base)
    old_vocab = old_tokenizer.get_vocab(with_added_tokens=True)
    assert 'give' not in old_vocab and 'picks' not in old_vocab

    tuned = Trainer(config(tmp_path / 'tuned', steps=1, init=str(base), paraphrase=True), samples)
    assert {'pass', 'give', 'picks', 'hands'} <= set(tuned.new_words)
    vocab = tuned.tokenizer.get_vocab(with_added_tokens=True)
    assert all(vocab[word] == i for word, i in old_vocab.items())  # every old id keeps its word
    assert sorted(vocab[w] for w in tuned.new_words) == list(range(len(old_vocab), len(vocab)))
    rows = len(vocab)
    for name, old in (('vlm', old_model.model.vlm.get_input_embeddings()), ('dit', old_model.model.dit.embed_tokens)):
        new = tuned.model.model.vlm.get_input_embeddings() if name == 'vlm' else tuned.model.model.dit.embed_tokens
        assert new.weight.shape == (rows, old.weight.shape[1]), name
        assert torch.equal(new.weight[: len(old_vocab)], old.weight), name
        assert torch.allclose(new.weight[len(old_vocab) :], old.weight.mean(0).expand(rows - len(old_vocab), -1))
    unk = vocab['<unk>']
    for text in TASK_PHRASINGS['transfer_cube']:
        assert unk not in tuned.tokenizer.encode(text, add_special_tokens=False).ids, text

    tuned.run()
    assert read_metadata(tmp_path / 'tuned').tasks == list(TASK_PHRASINGS['transfer_cube'])
    policy = VLAPolicy.load(tmp_path / 'tuned', num_steps=2, rig_joint_names=samples.joint_names)
    assert policy.model.config.vlm_config.text_config.vocab_size == rows
    images = {c: np.zeros((240, 320, 3), np.uint8) for c in samples.cameras}
    state = samples.state[0].astype(np.float64)
    result = policy.infer(Observation(images=images, state=state, task='give the cube to the left arm'))
    assert result.actions.shape == (10, 14) and np.all(np.isfinite(result.actions))
    # a second fine-tune on the same words adds none
    again = Trainer(config(tmp_path / 'again', steps=1, init=str(tmp_path / 'tuned'), paraphrase=True), samples)
    assert again.new_words == []


def test_the_text_is_not_trained_to_predict_a_coached_subtask_but_the_actions_still_read_it(samples, tmp_path):
    """Inside a coached move (collect --coach, from collect.json's events) the label is an instruction: the
    subtask tokens stay in the sequence the action expert attends to, and carry no text loss."""
    import dataclasses

    from bimanual_vla.learning.train_data import COACHED_PAD_S, coached_samples, coached_windows

    summary = {'episodes': [
        {'label': 'transfer_cube seed 3', 'events': [[0.4, 'perturb', 'drop'], [0.5, 'coach', 'lift the cube', 0.2]]},
        {'label': 'transfer_cube seed 4', 'events': [[0.3, 'coach', 'lift the cube']]},  # no move_s: not counted
    ]}  # fmt: skip
    windows = coached_windows(summary)
    assert windows == {'transfer_cube seed 3': [(0.5, 0.7)]}
    coached = coached_samples(samples, windows)
    first = np.flatnonzero(samples.episode == 0)
    t = (np.arange(len(first))) / 50.0
    expected = (t >= 0.5 - COACHED_PAD_S) & (t <= 0.7 + COACHED_PAD_S)
    assert np.array_equal(coached[first], expected) and not coached[samples.episode == 1].any()
    marked = dataclasses.replace(samples, coached=coached)
    trainer = Trainer(config(tmp_path / 'ckpt'), marked)
    inside, outside = int(first[expected][3]), int(first[~expected][-1])
    batch = trainer.batches(np.array([inside, outside]))
    for row, counted in ((0, False), (1, True)):
        sub = trainer.batches.subtask_ids[trainer.batches.subtask_target[[inside, outside][row]]]
        n_sub = int((batch.token_type_ids[row][batch.attention_mask[row] == 1] == 1).sum())
        assert n_sub == len(sub) > 0  # the label is in the input either way
        assert int((batch.labels[row] != -100).sum()) == (len(sub) if counted else 0)


def test_a_fine_tune_keeps_the_normalisation_its_weights_were_trained_with(samples, tmp_path):
    """`--init` on a few episodes (takeover corrections): the checkpoint's statistics stay, unless --renormalize."""
    from bimanual_vla.learning.train import compute_stats
    from bimanual_vla.learning.train_data import leave_out_episodes
    from bimanual_vla.policy_node.checkpoint import read_metadata

    base = tmp_path / 'base'
    Trainer(config(base, steps=1), samples).run()
    few = leave_out_episodes(samples, {samples.info['episode_labels'][0]})  # one of the two episodes
    assert 0 < len(few) < len(samples)
    kept = Trainer(config(tmp_path / 'kept', steps=1, init=str(base)), few)
    assert kept.metadata.normalization == read_metadata(base).normalization
    redone = Trainer(config(tmp_path / 'redone', steps=1, init=str(base), renormalize=True), few)
    assert redone.metadata.normalization.state == compute_stats(few.state)
    assert redone.metadata.normalization != read_metadata(base).normalization


def test_a_fine_tune_on_a_task_new_to_the_checkpoint_normalises_with_its_own_data(samples, tmp_path, caplog):
    """A second task (insertion added to a cube checkpoint) moves the arms elsewhere: the checkpoint's statistics
    would put its actions many spreads out, so `--init` recomputes them and says why."""
    import dataclasses

    from bimanual_vla.learning.train import compute_stats
    from bimanual_vla.policy_node.checkpoint import read_metadata

    base = tmp_path / 'base'
    Trainer(config(base, steps=1), samples).run()
    peg = dataclasses.replace(samples, tasks=['insert the peg into the socket'], state=samples.state + 0.5)
    with caplog.at_level('WARNING', logger='bimanual_vla.learning.train'):
        tuned = Trainer(config(tmp_path / 'tuned', steps=1, init=str(base)), peg)
    assert tuned.metadata.normalization.state == compute_stats(peg.state)
    assert tuned.metadata.normalization != read_metadata(base).normalization
    assert "task(s) ['insert the peg into the socket'] are new to" in caplog.text


def test_short_training_lowers_the_loss(samples, tmp_path):
    trainer = Trainer(config(tmp_path / 'ckpt', steps=40, batch_size=8, lr=1e-2), samples)
    batch = trainer.batches(np.arange(0, len(samples), 4)[:16])

    def fixed_loss() -> tuple[float, float]:
        with torch.no_grad():
            _, m = compute_loss(trainer.model, batch, step_generator(123, 0), flow_samples=4)
        return m['flow'], m['subtask_ce']

    flow0, ce0 = fixed_loss()
    result = trainer.run()
    flow1, ce1 = fixed_loss()
    assert result.steps == 40
    assert flow1 < 0.85 * flow0, (flow0, flow1)
    assert ce1 < 0.5 * ce0, (ce0, ce1)
    assert (tmp_path / 'ckpt' / 'training' / 'loss.png').stat().st_size > 1000
    rows = (tmp_path / 'ckpt' / 'training' / 'log.csv').read_text().splitlines()
    assert len(rows) == 41  # header + one row per step (log_every=1)
    assert {'loss', 'flow', 'subtask_ce', 'lr'} <= set(rows[0].split(','))


def test_resume_gives_the_same_next_step_loss(samples, tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    trainer = Trainer(config(a, steps=2), samples)
    trainer.run()  # saves model, optimizer and step at step 2
    shutil.copytree(a, b)
    trainer.cfg.steps = 3
    uninterrupted = trainer.run().history[-1]['loss']
    resumed_trainer = Trainer(config(b, steps=3), samples, resume=True)
    assert resumed_trainer.step == 2
    resumed = resumed_trainer.run().history[-1]['loss']
    assert resumed == pytest.approx(uninterrupted, abs=1e-6)
    for p, q in zip(trainer.model.parameters(), resumed_trainer.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_output_is_a_loadable_checkpoint_without_pickles(samples, tmp_path):
    from bimanual_vla.policy_node.checkpoint import check_directory, find_pickle_files, read_metadata
    from bimanual_vla.policy_node.model import Observation, VLAPolicy

    out = tmp_path / 'ckpt'
    Trainer(config(out, steps=1), samples).run()
    assert check_directory(out) == out
    assert find_pickle_files(out) == []
    assert (out / TRAIN_STATE_DIR / 'optimizer.safetensors').is_file()
    state = json.loads((out / TRAIN_STATE_DIR / 'state.json').read_text())
    assert state['step'] == 1
    meta = read_metadata(out)
    assert meta.joint_names == samples.joint_names
    assert np.allclose(meta.normalization.state.mean, samples.state.astype(np.float64).mean(0), atol=1e-5)
    assert meta.reasoning is True and meta.chunk_size == 10 and meta.image_size == (32, 32)
    # what it was trained on, for the node's unknown-task warning and the decoding drafts
    assert meta.tasks == ['transfer the cube from the right arm to the left arm']
    assert meta.subtasks == [s for s in samples.subtasks if s]
    assert 'move the right gripper above the cube' in meta.subtasks
    policy = VLAPolicy.load(out, num_steps=2, rig_joint_names=samples.joint_names)
    assert len(policy.drafts) == len(meta.subtasks)
    images = {c: np.zeros((240, 320, 3), np.uint8) for c in samples.cameras}
    result = policy.infer(Observation(images=images, state=samples.state[0].astype(np.float64), task=samples.tasks[0]))
    assert result.actions.shape == (10, 14) and np.all(np.isfinite(result.actions))


def test_flow_time_and_schedule_follow_the_recipe():
    from transformers import PI0Config

    t = sample_time(PI0Config(), 20000, step_generator(0, 0))
    assert float(t.min()) >= 0.001 and float(t.max()) <= 1.0
    # Beta(1.5, 1) has mean 0.6: pi0 spends more of its training near the noise end
    assert float(t.mean()) == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)
    cfg = TrainConfig(data=[], out='x', steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    assert learning_rate(55, cfg) == pytest.approx(0.55e-3)


def test_episode_starts_can_be_oversampled(samples):
    from bimanual_vla.learning.train import sample_table

    table = sample_table(samples, TrainConfig(data=[], out='x', start_oversample_s=0.2, start_oversample_factor=3))
    counts = np.bincount(table, minlength=len(samples))
    starts = np.flatnonzero(np.r_[True, samples.episode[1:] != samples.episode[:-1]])
    for s in starts:  # 0.2 s at 50 Hz: the first 10 samples of every episode, three times
        assert counts[s : s + 10].tolist() == [3] * 10
        assert counts[s + 10] == 1
    assert len(table) == len(samples) + 2 * 10 * len(starts)


def test_subtask_lookahead_trains_on_the_later_label_within_the_episode(samples):
    import dataclasses

    from bimanual_vla.learning.train import subtask_targets

    assert subtask_targets(samples, 0.0).tolist() == samples.subtask_id.tolist()
    distinct = dataclasses.replace(samples, subtask_id=np.arange(len(samples)))  # a label per sample: see the shift
    ahead = subtask_targets(distinct, 0.1)  # 5 samples at 50 Hz
    ends = np.flatnonzero(np.r_[samples.episode[1:] != samples.episode[:-1], True])
    assert len(ends) == 2
    expected = [min(i + 5, ends[np.searchsorted(ends, i)]) for i in range(len(samples))]  # never into the next
    assert ahead.tolist() == expected


def test_crop_is_applied_to_the_cache_and_saved_with_the_checkpoint(samples, tmp_path):
    """Training and the policy cut the same region: cached pixels equal the policy's own preprocessing."""
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.learning.train_data import build_cache
    from bimanual_vla.policy_node.checkpoint import read_metadata
    from bimanual_vla.policy_node.model import Observation, VLAPolicy

    bag = samples.directory.parent.parent / 'bag'
    box = (100, 70, 120, 100)
    options = dict(rig='aloha_sim', image_size=(32, 32), chunk_size=10, keep_failed=True, progress=False)
    cropped = build_cache([bag], tmp_path / 'cache', crops={'top': box}, **options)
    assert np.array_equal(cropped.frames['left_wrist'], samples.frames['left_wrist'])  # only top is cropped
    assert not np.array_equal(cropped.frames['top'][0], samples.frames['top'][0])

    trainer = Trainer(config(tmp_path / 'run', crops={'top': list(box)}), cropped)
    trainer.run()
    assert read_metadata(tmp_path / 'run').image_crops == {'top': box}
    policy = VLAPolicy.load(tmp_path / 'run')
    first = next(BagDataset([bag], rig='aloha_sim', chunk_size=10).iter_episode(0))
    prepared = policy.prepare(Observation(first['images'], first['state'], cropped.tasks[0]))
    for k, cam in enumerate(policy.camera_names):
        expected = cropped.frames[cam][cropped.frame_index[0, cropped.cameras.index(cam)]]
        got = prepared.pixel_values[0, k].numpy().transpose(1, 2, 0)
        assert np.allclose((got + 1.0) * 127.5, expected, atol=1e-3), cam

    with pytest.raises(ValueError, match=r"crop for camera\(s\) \['nose'\]"):
        build_cache([bag], tmp_path / 'cache2', crops={'nose': box}, **options)


def test_train_cli_trains_resumes_without_data_and_refuses_bad_arguments(samples, tmp_path, capsys):
    from bimanual_vla.cli.main import main
    from bimanual_vla.policy_node.checkpoint import read_metadata

    bag, out = str(samples.directory.parent.parent / 'bag'), tmp_path / 'run'
    tiny = ['hidden=32', 'layers=2', 'heads=2', 'head_dim=16', 'expert_hidden=16', 'vision_hidden=16',
            'vision_layers=1', 'image_size=32', 'patch_size=16']  # fmt: skip
    common = ['--chunk-size', '10', '--batch-size', '4', '--threads', '1', '--save-every', '0', '--no-progress',
              '--cache-dir', str(tmp_path / 'cache')]  # fmt: skip
    args = ['train', '--data', bag, '--out', str(out), '--tiny-config', *tiny, '--steps', '2', '--keep-failed',
            '--crop', 'top=100,70,120,100', *common]  # fmt: skip
    assert main(args) == 0
    assert read_metadata(out).image_crops == {'top': (100, 70, 120, 100)}
    # collect stamps commands when issued: the chunks of a model trained on them start at the snapshot
    summary = json.loads((samples.directory.parent.parent / 'bag' / 'collect.json').read_text())
    assert summary['command_stamps'] == 'issued'
    assert read_metadata(out).action_time_offset_s == 0.0
    assert read_metadata(out).expert_approach == 'cartesian'  # from collect.json, for eval-sim's replay
    # The data is checked against the policy node's speed limit: the expert's first second (seeds 3
    # and 4) holds its wrist flip, up to 17 rad/s, which the 2 rad/s gate would clamp.
    from bimanual_vla.config import load_rig
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert

    rig = load_rig('aloha_sim')
    plan_max = max(
        float(np.max(np.abs(np.diff(p[:50], axis=0))) * rig.control_rate_hz)
        for seed in (3, 4)
        for p in ScriptedExpert(
            rig, 'transfer_cube', seed, options=ExpertOptions(approach='cartesian')
        ).joint_plan.values()
    )
    speed = json.loads((out / 'training' / 'demonstration_speed.json').read_text())
    assert plan_max > 2.0 and speed['limit_rad_s'] == 2.0
    assert speed['max_rad_s'] == pytest.approx(plan_max, rel=0.02)
    assert set(speed['joints_over']) & {'right_forearm_roll', 'right_wrist_rotate'}
    assert speed['phases_over'] and next(iter(speed['phases_over'])) == 'move the right gripper above the cube'
    started = json.loads(capsys.readouterr().out.splitlines()[0])
    assert started['demonstration_speed'] == speed
    state = out / TRAIN_STATE_DIR / 'state.json'
    assert json.loads(state.read_text())['step'] == 2
    assert main(['train', '--out', str(out), '--resume', '--steps', '3', '--no-progress']) == 0
    assert json.loads(state.read_text())['step'] == 3

    with pytest.raises(SystemExit, match=r'--data is required \(except with --resume\)'):
        main(['train', '--out', str(tmp_path / 'other'), '--tiny-config', *tiny])
    with pytest.raises(SystemExit, match="--resume continues on the run's own data"):
        main(['train', '--out', str(out), '--resume', '--data', str(tmp_path / 'elsewhere')])
    with pytest.raises(SystemExit, match=r"--crop: expected CAM=X,Y,W,H .* got 'top=1,2,3'"):
        main(['train', '--data', bag, '--out', str(tmp_path / 'other'), '--crop', 'top=1,2,3', *common])
