"""Policy benchmarks; prints one JSON object.

Model part (this file's first sections):
* ``tiny_inference``: a tiny random checkpoint made on the spot; median milliseconds over
  N inferences, split into preprocess / prefix / reasoning / flow (and per flow step), for
  reasoning on, reasoning off, and RTC-guided sampling.
* ``shipped_reasoning``: subtask decoding of the shipped checkpoint on rendered sim frames, one
  token per pass against drafted decoding (same text, fewer passes), and the cost of one chunk's
  rviz gripper paths.
* ``shipped_rtc``: one chunk of the shipped checkpoint unguided and RTC-guided, with the exact
  Jacobian product (a backward pass per flow step) and with the identity.
* ``pi0_meta``: pi0's real dimensions (PaliGemma 3B backbone + 300M Gemma action expert)
  built on the meta device: parameter counts per component and the shapes of one
  inference's tensors, without allocating any weights.

Each section is a function returning a dict; ``SECTIONS`` maps names to them, so other
sections (the control loop) can be added beside these. Run:

    .venv/bin/python bench/policy_bench.py [--only tiny_inference pi0_meta] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


def _timings(results: list[Any], reduce: Callable[[list[float]], float]) -> dict[str, float]:
    keys = results[0].timings_ms.keys()
    return {k: round(reduce([r.timings_ms[k] for r in results]), 3) for k in keys}


def bench_tiny_inference(runs: int = 20, warmup: int = 3, subtask_tokens: int = 16) -> dict[str, Any]:
    """Median inference time of the default tiny checkpoint on this machine's CPU."""
    import numpy as np
    import torch

    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint
    from bimanual_vla.policy_node.chunking import soft_mask
    from bimanual_vla.policy_node.model import ChunkGuide, Observation, VLAPolicy

    with tempfile.TemporaryDirectory() as tmp:
        directory = make_tiny_checkpoint(Path(tmp) / 'tiny', rig='aloha_sim')
        policy = VLAPolicy.load(directory, num_steps=10, max_subtask_tokens=subtask_tokens)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in policy.camera_names}
    obs = Observation(images=images, state=np.asarray(policy.metadata.normalization.state.mean), task='transfer')
    previous = policy.infer(obs, decode_subtask=False).actions  # before any subtask exists: truly no reasoning
    guide = ChunkGuide(actions=previous[:25], weights=soft_mask(5, 25), max_guidance=5.0)
    modes: dict[str, dict[str, Any]] = {
        'reasoning': {'decode_subtask': True},
        'no_reasoning': {'decode_subtask': False},
        'rtc_guided_no_reasoning': {'decode_subtask': False, 'guide': guide},
        'rtc_guided_identity_jacobian_no_reasoning': {
            'decode_subtask': False,
            'guide': ChunkGuide(guide.actions, guide.weights, guide.max_guidance, jacobian='identity'),
        },
    }
    out: dict[str, Any] = {
        'checkpoint': {
            'parameters': sum(p.numel() for p in policy.model.parameters()),
            'chunk_size': policy.chunk_size,
            'joints': len(policy.joint_names),
            'cameras': len(policy.camera_names),
            'camera_resolution': '640x480',
            'model_image_size': list(policy.image_size),
            'prefix_tokens': len(policy.prompt_ids(obs.task)),
            'num_steps': policy.num_steps,
        },
        'runs': runs,
        'torch_threads': torch.get_num_threads(),
    }
    for name, kwargs in modes.items():
        policy.clear_subtask()  # 'no reasoning' must not re-feed the subtask decoded by the first mode
        for _ in range(warmup):
            policy.infer(obs, **kwargs)
        results = [policy.infer(obs, **kwargs) for _ in range(runs)]
        timings = _timings(results, statistics.median)
        # min: the uncontended cost, useful on a shared machine where the median absorbs other load
        entry: dict[str, Any] = {'median_ms': timings, 'min_ms': _timings(results, min)}
        if name == 'reasoning':
            n_tokens = len(results[-1].subtask_token_ids)
            entry['subtask_tokens_fed'] = n_tokens
            entry['ms_per_subtask_token'] = round(timings['reasoning'] / max(1, n_tokens), 3)
        out[name] = entry
    return out


def pi0_config():
    """transformers' PI0Config defaults are pi0's real sizes: PaliGemma (SigLIP So400m/14 at 224 px +
    Gemma 2B) and an 18-layer, 1024-wide Gemma action expert sharing the backbone's KV layout."""
    from transformers import PI0Config

    return PI0Config()


def bench_pi0_meta(cameras: int = 3, task_tokens: int = 20) -> dict[str, Any]:
    """Build pi0 on the meta device, count parameters, and run shapes through one inference."""
    import torch
    from transformers import PI0ForConditionalGeneration

    config = pi0_config()
    t0 = time.perf_counter()
    with torch.device('meta'):
        model = PI0ForConditionalGeneration(config).eval()
    build_s = time.perf_counter() - t0
    vlm = model.model.vlm

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    params = {
        'vision_tower': count(vlm.vision_tower),
        'multi_modal_projector': count(vlm.multi_modal_projector),
        'language_model': count(vlm.language_model),
        'action_expert': count(model.model.dit),
        'action_heads': count(model.embed_action_time) + count(model.action_out_proj),
    }
    params['total'] = count(model)
    assert params['total'] == sum(v for k, v in params.items() if k != 'total')
    # PI0 feeds the expert inputs_embeds only, so its Gemma token table is never read
    params['action_expert_unused_embed_tokens'] = count(model.model.dit.get_input_embeddings())

    vision = config.vlm_config.vision_config
    tokens_per_image = (vision.image_size // vision.patch_size) ** 2
    n_image = cameras * tokens_per_image
    seq = n_image + task_tokens
    image_id = config.vlm_config.image_token_id
    text_vocab = config.vlm_config.text_config.vocab_size
    ids = torch.cat(
        [torch.full((1, n_image), image_id), torch.randint(0, min(text_vocab, image_id), (1, task_tokens))], dim=1
    ).to('meta')
    pixels = torch.empty(1, cameras, 3, vision.image_size, vision.image_size, device='meta')
    pixel_mask = torch.ones(1, cameras, dtype=torch.bool, device='meta')
    mask = torch.ones(1, seq, dtype=torch.long, device='meta')
    shapes: dict[str, Any] = {}
    try:
        with torch.no_grad():
            embeds = model.model.embed_prefix(ids, pixels, pixel_mask)
            out = vlm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=torch.arange(seq, device='meta')[None],
                token_type_ids=torch.zeros(1, seq, device='meta'),
                use_cache=True,
            )
            cache = out.past_key_values
            layer0 = cache.layers[0]
            shapes['prefix_embeds'] = list(embeds.shape)
            shapes['kv_cache_layer'] = list(layer0.keys.shape)
            shapes['kv_cache_layers'] = len(cache.layers)
            state = torch.empty(1, config.max_state_dim, device='meta')
            noise = torch.empty(1, config.chunk_size, config.max_action_dim, device='meta')
            velocity = model(
                state=state,
                noise=noise,
                timestep=torch.ones(1, device='meta'),
                attention_mask=mask,
                past_key_values=cache,
            ).logits
            shapes['velocity'] = list(velocity.shape)
            shapes['lm_logits'] = [1, config.vlm_config.text_config.vocab_size]
        shapes['ok'] = shapes['velocity'] == [1, config.chunk_size, config.max_action_dim]
    except Exception as exc:  # meta tensors cannot run every kernel; report instead of crashing the bench
        shapes['ok'] = False
        shapes['error'] = f'{type(exc).__name__}: {exc}'

    text = config.vlm_config.text_config
    kv_bytes_bf16 = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * seq * 2
    return {
        'parameters': params,
        'parameters_billion': round(params['total'] / 1e9, 3),
        'weights_gib': {
            'bf16': round(params['total'] * 2 / 2**30, 2),
            'fp32': round(params['total'] * 4 / 2**30, 2),
        },
        'dims': {
            'backbone': f'{text.num_hidden_layers}x{text.hidden_size} (heads {text.num_attention_heads}, '
            f'kv {text.num_key_value_heads}, head_dim {text.head_dim})',
            'expert': f'{config.dit_config.num_hidden_layers}x{config.dit_config.hidden_size} '
            f'(head_dim {config.dit_config.head_dim})',
            'vision': f'{vision.num_hidden_layers}x{vision.hidden_size}, {vision.image_size}px/{vision.patch_size}',
        },
        'prefix_tokens': seq,
        'tokens_per_image': tokens_per_image,
        'kv_cache_prefix_mib_bf16': round(kv_bytes_bf16 / 2**20, 2),
        'shapes': shapes,
        'build_s_meta': round(build_s, 2),
    }


# pi0_meta runs first: after CPU inference in the same process, a meta-device forward trips
# over a CPU tensor transformers keeps from the earlier calls ("not on the expected device").
def bench_shipped_reasoning(every_n_steps: int = 10, seed: int = 1000) -> dict[str, Any]:
    """Subtask decoding on the shipped checkpoint, one token per pass vs drafted, on real frames.

    The scripted expert plays one transfer_cube episode in the sim (a seed not trained on); every
    `every_n_steps` control steps its three camera images and joints become an observation, as
    the policy node would see them. Each is decoded twice from the same prefix cache: greedily one
    token per pass (`draft=False`), and drafted (`VLAPolicy.decode_subtask`, drafts accumulated
    over the episode as in a run). Also times the rviz gripper paths of one chunk (URDF FK).
    """
    os.environ.setdefault('MUJOCO_GL', 'egl')
    import numpy as np
    import torch
    from builtin_interfaces.msg import Time

    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.collect import TASK_TEXT
    from bimanual_vla.learning.demo import trained_checkpoint
    from bimanual_vla.policy_node.markers import GripperPaths, chunk_markers
    from bimanual_vla.policy_node.model import Observation, SubtaskDrafts, VLAPolicy
    from bimanual_vla.sim.expert import ScriptedExpert, run_episode
    from bimanual_vla.sim.scene import SceneRenderer, SimScene

    rig = load_rig('aloha_sim')
    checkpoint = trained_checkpoint()
    if checkpoint is None:
        return {'skipped': 'no trained checkpoint installed for the default policy'}
    policy = VLAPolicy.load(checkpoint, num_steps=5)
    scene = SimScene(rig, 'transfer_cube', seed)
    renderer = SceneRenderer(scene.model, {c.name: (c.width, c.height) for c in rig.cameras})
    observations: list[tuple[Observation, str]] = []

    def keep(step: int, sc: SimScene, label: str) -> None:
        if step % every_n_steps == 0:
            state = np.concatenate([sc.joint_positions(a.name) for a in rig.arms])
            obs = Observation(images=renderer.render_all(sc.data), state=state, task=TASK_TEXT['transfer_cube'])
            observations.append((obs, label))

    run_episode(scene, ScriptedExpert(rig, 'transfer_cube', seed), on_step=keep)
    out: dict[str, Any] = {'observations': len(observations), 'torch_threads': torch.get_num_threads()}
    texts: dict[bool, list[list[int]]] = {}
    for draft in (False, True):
        policy.drafts = SubtaskDrafts()
        ms, passes, ids_all = [], [], []
        for obs, _ in observations:
            prep = policy.prepare(obs)
            cache, hidden = policy.encode_prefix(prep)
            start = time.perf_counter()
            ids, _ = policy.decode_subtask(cache, prep.attention_mask, hidden, policy.max_subtask_tokens, draft=draft)
            ms.append((time.perf_counter() - start) * 1e3)
            passes.append(policy.last_decode_passes)
            ids_all.append(ids)
        texts[draft] = ids_all
        out['drafted' if draft else 'one_token_per_pass'] = {
            'decode_ms_median': round(statistics.median(ms), 2),
            'passes_mean': round(float(np.mean(passes)), 2),
            'tokens_mean': round(float(np.mean([len(i) for i in ids_all])), 2),
        }
    out['same_text'] = texts[True] == texts[False]
    labels = [label for _, label in observations]
    written = [policy.subtask_text(ids) for ids in texts[True]]
    matches = [w == x for w, x in zip(written, labels, strict=True)]
    out['text_equals_expert_label_at_the_observation'] = round(float(np.mean(matches)), 3)
    names = [f'{a.name}_{j.name}' for a in rig.arms for j in a.joints]
    paths = GripperPaths(rig, names, [a.name for a in rig.arms])
    chunk = np.tile(np.concatenate([scene.joint_positions(a.name) for a in rig.arms]), (policy.chunk_size, 1))
    start = time.perf_counter()
    for _ in range(20):
        chunk_markers(paths, chunk, 1.0 / rig.control_rate_hz, stamp=Time(), reasoning=written[-1])
    out['gripper_path_markers_ms'] = round((time.perf_counter() - start) / 20 * 1e3, 2)
    out['markers_mode'] = paths.mode
    return out


def bench_shipped_rtc(runs: int = 20, warmup: int = 5, frozen: int = 7, overlap: int = 45) -> dict[str, Any]:
    """One chunk of the shipped checkpoint as the node runs it (5 flow steps, subtask decoded), unguided
    and RTC-guided with the exact Jacobian product and with the identity (`inference.rtc_jacobian`).

    The guide is what the node builds mid-episode: `frozen` committed steps, then the soft mask over
    the rest of a 45-step overlap. Median and 90th percentile over `runs`; the tail matters because
    RTC freezes steps for the slowest recent inference.
    """
    import numpy as np

    from bimanual_vla.learning.demo import trained_checkpoint
    from bimanual_vla.policy_node.chunking import soft_mask
    from bimanual_vla.policy_node.model import ChunkGuide, Observation, VLAPolicy

    checkpoint = trained_checkpoint()
    if checkpoint is None:
        return {'skipped': 'no trained checkpoint installed for the default policy'}
    policy = VLAPolicy.load(checkpoint, num_steps=5)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for c in policy.camera_names}
    obs = Observation(images=images, state=np.asarray(policy.metadata.normalization.state.mean), task='transfer')
    previous = policy.infer(obs).actions
    out: dict[str, Any] = {'runs': runs, 'frozen_steps': frozen, 'overlap': overlap}
    for name, jacobian in (('unguided', None), ('rtc_exact', 'exact'), ('rtc_identity', 'identity')):
        guide = None
        if jacobian is not None:
            guide = ChunkGuide(previous[:overlap] + 0.01, soft_mask(frozen, overlap), 5.0, jacobian=jacobian)
        for _ in range(warmup):
            policy.infer(obs, guide=guide)
        ms = []
        for _ in range(runs):
            start = time.perf_counter()
            policy.infer(obs, guide=guide)
            ms.append((time.perf_counter() - start) * 1e3)
        out[name] = {'median_ms': round(statistics.median(ms), 1), 'p90_ms': round(float(np.percentile(ms, 90)), 1)}
    return out


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    'pi0_meta': bench_pi0_meta,
    'shipped_rtc': bench_shipped_rtc,
    'shipped_reasoning': bench_shipped_reasoning,
    'tiny_inference': bench_tiny_inference,
}
# Streaming sections (chunk-switch discontinuity per joining strategy, control-loop period and
# camera-to-command latency with the real node): bench/policy_stream_bench.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_stream_bench import SECTIONS as _STREAM_SECTIONS  # noqa: E402

SECTIONS.update(_STREAM_SECTIONS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', nargs='+', choices=sorted(SECTIONS), help='run only these sections')
    parser.add_argument('--runs', type=int, default=20, help='inferences per timing (median)')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch)')
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {
        'machine': {
            'cpu_count': os.cpu_count(),
            'python': platform.python_version(),
            'torch': torch.__version__,
            'load_avg_1m': round(os.getloadavg()[0], 2),
        }
    }
    for name in args.only or list(SECTIONS):
        fn = SECTIONS[name]
        results[name] = fn(runs=args.runs) if name in ('tiny_inference', 'shipped_rtc') else fn()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
