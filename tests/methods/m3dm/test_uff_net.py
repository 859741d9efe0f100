"""UFF (M3DM) forward pass against the PyTorch reference, random weights in the official state-dict layout."""
import numpy as np
import torch

from g2sf_jax.methods.m3dm import uff_net as uff
from references import torch_m3dm


def test_forward_matches_torch():
  torch.manual_seed(0)
  ref = torch_m3dm.FeatureFusionBlock(12, 8, head=16)
  for p in ref.parameters():  # non-trivial LayerNorm affine
    torch.nn.init.normal_(p, std=0.3)
  params = uff.params_from_torch({k: v.detach().numpy() for k, v in ref.state_dict().items()})
  xyz = torch.randn(30, 12)
  rgb = torch.randn(30, 8)
  fused, inter = uff.UFF(head_dim=16).apply({'params': params}, xyz.numpy(), rgb.numpy())
  with torch.no_grad():
    want = ref.feature_fusion(xyz, rgb)
    q, k = ref.rgb_head(want[:, 12:]), ref.xyz_head(want[:, :12])
  np.testing.assert_allclose(fused, want.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(inter['q'], q.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(inter['k'], k.numpy(), rtol=1e-5, atol=1e-6)
  assert fused.shape == (30, 20)


def test_init_matches_the_torch_layout():
  import jax
  params = uff.init_params(uff.UFF(), jax.random.key(0), 12, 8)
  ref = torch_m3dm.FeatureFusionBlock(12, 8)
  ours = {'/'.join(k): v.shape for k, v in _flat(params).items()}
  theirs = {'/'.join(k): tuple(v.shape)
            for k, v in _flat(uff.params_from_torch({k: v.numpy() for k, v in ref.state_dict().items()})).items()}
  assert ours == theirs
  bound = 1 / np.sqrt(48)  # fc2's fan-in: PyTorch's U(±1/√fan_in)
  w = np.asarray(params['xyz_mlp']['fc2']['kernel'])
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out
