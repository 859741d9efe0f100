"""DINO ViT (algorithms.md §2.1) against Hugging Face `transformers.ViTModel`, weights through the real port.

Why this oracle: the reference builds the model with timm, and timm cannot be imported here (it imports torchvision,
which cannot load beside the CPU-only torch wheel). `transformers.ViTModel` is an independent PyTorch implementation of
the same architecture (conv patch embedding, CLS prepended before the absolute position embedding is added, pre-norm
blocks with biased qkv, exact-erf GELU, LayerNorm ε 1e-6, final LayerNorm), with its own key names. The tests build a
random state dict in the DINO/timm layout (algorithms.md §2.6), convert it with `ports.dino_vit`, and map the same
tensors into the HF model (splitting qkv into q, k, v), so a layout slip in the port or the model shows up.
"""
import time

import jax
import ml_collections
import numpy as np
import pytest
import torch
from transformers import ViTConfig
from transformers import ViTModel

from g2sf_jax import backbones
from g2sf_jax.models import vit
from ports import dino_vit as port


def random_dino_state(arch: port.VitArch, seed: int) -> dict[str, torch.Tensor]:
  """Non-trivial tensors under the DINO/timm names, with 1/√fan_in-scaled weights and perturbed norms."""
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for key, entry in port.table(arch).items():
    t = torch.randn(entry.shape, generator=gen)
    if 'norm' in key and key.endswith('weight'):
      t = 1.0 + 0.2 * t
    elif len(entry.shape) >= 2 and key not in ('cls_token', 'pos_embed'):
      t = t * (np.prod(entry.shape[1:]) ** -0.5)
    else:
      t = 0.1 * t if key.endswith('bias') else 0.5 * t
    state[key] = t
  return state


def hf_model(state: dict[str, torch.Tensor], arch: port.VitArch) -> ViTModel:
  config = ViTConfig(image_size=arch.img_size, patch_size=arch.patch_size, hidden_size=arch.dim,
                     num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                     intermediate_size=int(arch.dim * arch.mlp_ratio), layer_norm_eps=1e-6, qkv_bias=True,
                     hidden_act='gelu', hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = ViTModel(config, add_pooling_layer=False).eval()
  hf = {'embeddings.cls_token': state['cls_token'], 'embeddings.position_embeddings': state['pos_embed'],
        'embeddings.patch_embeddings.projection.weight': state['patch_embed.proj.weight'],
        'embeddings.patch_embeddings.projection.bias': state['patch_embed.proj.bias'],
        'layernorm.weight': state['norm.weight'], 'layernorm.bias': state['norm.bias']}
  for i in range(arch.depth):
    src, dst = f'blocks.{i}.', f'layers.{i}.'
    for part in ('weight', 'bias'):
      q, k, v = state[src + f'attn.qkv.{part}'].chunk(3, dim=0)  # rows [q; k; v] (algorithms.md §2.6)
      hf.update({dst + f'attention.q_proj.{part}': q, dst + f'attention.k_proj.{part}': k,
                 dst + f'attention.v_proj.{part}': v,
                 dst + f'attention.o_proj.{part}': state[src + f'attn.proj.{part}'],
                 dst + f'layernorm_before.{part}': state[src + f'norm1.{part}'],
                 dst + f'layernorm_after.{part}': state[src + f'norm2.{part}'],
                 dst + f'mlp.fc1.{part}': state[src + f'mlp.fc1.{part}'],
                 dst + f'mlp.fc2.{part}': state[src + f'mlp.fc2.{part}']})
  model.load_state_dict(hf, strict=True)
  return model


def hf_forward(model: ViTModel, images: np.ndarray, arch: port.VitArch):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2), output_hidden_states=True)
  g = arch.img_size // arch.patch_size
  grid = out.last_hidden_state[:, 1:].reshape(len(images), g, g, arch.dim).numpy()
  return grid, [h.numpy() for h in out.hidden_states]


def test_tiny_vit_matches_hf_including_intermediates():
  arch = port.VitArch(img_size=32, patch_size=8, dim=64, depth=3, num_heads=4)
  state = random_dino_state(arch, seed=0)
  variables = port.convert_state({k: v.numpy() for k, v in state.items()}, 'in-memory', arch)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  model = vit.VisionTransformer(img_size=32, patch_size=8, dim=64, depth=3, num_heads=4)
  grid, inter = model.apply(variables, images)
  want, hidden = hf_forward(hf_model(state, arch), images, arch)
  assert grid.shape == (2, 4, 4, 64)
  assert np.abs(np.asarray(grid) - want).max() <= 1e-5
  for i in range(3):  # HF hidden_states[i + 1] is the output of block i
    assert np.abs(np.asarray(inter[f'block_{i}']) - hidden[i + 1]).max() <= 1e-5
  np.testing.assert_allclose(np.asarray(inter['norm'][:, 1:]).reshape(2, 4, 4, 64), np.asarray(grid))
  with pytest.raises(ValueError, match=r'\[B, 32, 32, 3\]'):
    model.apply(variables, images[:, :16])


@pytest.mark.slow
def test_full_size_b8_port_and_registry_match_hf(tmp_path):
  arch = port.VIT_B8
  state = random_dino_state(arch, seed=1)
  torch.save(state, tmp_path / 'dino_vitbase8_pretrain.pth')
  assert port.main([str(tmp_path / 'dino_vitbase8_pretrain.pth'), str(tmp_path / 'dino_vit_b8')]) == 0
  config = ml_collections.ConfigDict({'rgb_backbone': 'dino_vit_b8',
                                      'checkpoints': {'dino_vit_b8': str(tmp_path / 'dino_vit_b8')}})
  backbone = backbones.make_rgb_backbone(config)
  assert (backbone.name, backbone.dim) == ('dino_vit_b8', 768)
  images = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype(np.float32)
  start = time.perf_counter()
  got = np.asarray(jax.block_until_ready(backbone(images)))
  elapsed = time.perf_counter() - start
  want, _ = hf_forward(hf_model(state, arch), images, arch)
  err = np.abs(got - want).max()
  print(f'ViT-B/8 224: max abs err {err:.2e} (|feature| max {np.abs(want).max():.1f}), '
        f'flax {elapsed:.1f}s incl. compile')
  assert got.shape == (1, 28, 28, 768)
  assert err <= 1e-4, err
