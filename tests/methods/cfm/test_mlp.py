"""CFM's mapping MLP against the PyTorch reference, random weights in the official layout."""
import jax
import numpy as np
import torch

from g2sf_jax.methods.cfm import mlp as cfm_mlp
from references import torch_cfm


def test_forward_matches_torch_and_hidden_width():
  torch.manual_seed(1)
  ref = torch_cfm.FeatureProjectionMLP(10, 6)
  assert ref.input.out_features == 8  # (in + out) // 2
  params = cfm_mlp.params_from_torch({k: v.detach().numpy() for k, v in ref.state_dict().items()})
  x = torch.randn(40, 10)
  got = cfm_mlp.FeatureProjectionMLP(6).apply({'params': params}, x.numpy())
  with torch.no_grad():
    np.testing.assert_allclose(got, ref(x).numpy(), rtol=1e-5, atol=1e-6)
  init = cfm_mlp.init_params(cfm_mlp.FeatureProjectionMLP(6), jax.random.key(0), 10)
  assert {k: v['kernel'].shape for k, v in init.items()} == {'input': (10, 8), 'projection': (8, 8), 'output': (8, 6)}
