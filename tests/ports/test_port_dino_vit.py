"""ports.dino_vit: every failure mode names the file and the problem, and nothing is written (algorithms.md §2.6)."""
import numpy as np
import pytest
import torch

from ports import common
from ports import dino_vit as port


def vit_state(dim=768, patch=8, depth=12, img=224) -> dict[str, np.ndarray]:
  """Zero tensors with the timm/DINO names and shapes (np.zeros is lazily allocated, so full size is cheap)."""
  arch = port.VitArch(img_size=img, patch_size=patch, dim=dim, depth=depth, num_heads=dim // 64)
  return {k: np.zeros(e.shape, np.float32) for k, e in port.table(arch).items()}


def test_full_state_converts_to_the_flax_layout():
  state = vit_state()
  state['blocks.0.attn.qkv.weight'] = np.arange(2304 * 768, dtype=np.float32).reshape(2304, 768)
  state['patch_embed.proj.weight'] = np.random.default_rng(0).normal(size=(768, 3, 8, 8)).astype(np.float32)
  tree = port.convert_state(state, 'x.pth')
  p = tree['params']
  np.testing.assert_array_equal(p['blocks_0']['attn']['qkv']['kernel'], state['blocks.0.attn.qkv.weight'].T)
  np.testing.assert_array_equal(p['patch_embed']['kernel'][2, 5, 1], state['patch_embed.proj.weight'][:, 1, 2, 5])
  assert set(p) == {'cls_token', 'pos_embed', 'patch_embed', 'norm'} | {f'blocks_{i}' for i in range(12)}


def test_missing_key_and_wrong_shape_are_all_reported():
  state = vit_state()
  del state['blocks.5.mlp.fc1.bias'], state['norm.weight']
  state['pos_embed'] = np.zeros((1, 197, 768), np.float32)
  state['fc_norm.weight'] = np.zeros(768, np.float32)
  state['head.last_layer.weight'] = np.zeros((10, 768), np.float32)  # DINO head: ignored
  with pytest.raises(common.CheckpointError) as e:
    port.convert_state(state, 'ckpt.pth')
  msg = str(e.value)
  assert 'ckpt.pth' in msg and '2 missing keys:' in msg and 'blocks.5.mlp.fc1.bias' in msg and 'norm.weight,' in msg
  assert 'pos_embed: expected [1, 785, 768], got [1, 197, 768]' in msg
  assert '1 unexpected keys: fc_norm.weight' in msg and 'head.' not in msg


@pytest.mark.parametrize('state, named', [
    (vit_state(dim=384, patch=16), 'ViT-S/16'),
    (vit_state(dim=768, patch=16), 'ViT-B/16'),
    (dict(vit_state(dim=768, patch=14, img=224), **{'blocks.0.ls1.gamma': np.zeros(768),
                                                  'mask_token': np.zeros((1, 768)),
                                                  'register_tokens': np.zeros((1, 4, 768))}),
     'DINOv2 ViT-B/14 with registers'),
])
def test_wrong_vit_family_is_named(state, named):
  with pytest.raises(common.CheckpointError, match=named):
    port.convert_state(state, 'other.pth')


def test_point_mae_checkpoint_is_named_and_nothing_written(tmp_path):
  torch.save({'base_model': {'module.MAE_encoder.encoder.first_conv.0.weight': torch.zeros(128, 3, 1)}},
             tmp_path / 'pretrain.pth')
  with pytest.raises(common.CheckpointError, match=r'Point-MAE checkpoint.*python -m ports.point_mae'):
    port.main([str(tmp_path / 'pretrain.pth'), str(tmp_path / 'out')])
  torch.save({'encoder.first_conv.0.weight': torch.zeros(128, 3, 1)}, tmp_path / 'flat.pth')  # flat, no wrapper
  with pytest.raises(common.CheckpointError, match='Point-MAE'):
    port.main([str(tmp_path / 'flat.pth'), str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()


def test_teacher_wrapper_with_backbone_prefix_and_head(tmp_path):
  arch = port.VitArch(img_size=16, patch_size=8, dim=64, depth=1, num_heads=1)
  state = {'backbone.' + k: torch.randn(e.shape) for k, e in port.table(arch).items()}
  state['head.mlp.0.weight'] = torch.zeros(4, 64)
  torch.save({'teacher': state, 'student': {}, 'epoch': 3}, tmp_path / 'full.pth')
  unwrapped = port.unwrap(common.load_torch(tmp_path / 'full.pth'), 'full.pth')
  tree = port.convert_state(unwrapped, 'full.pth', arch)
  np.testing.assert_array_equal(tree['params']['norm']['scale'], state['backbone.norm.weight'].numpy())


def test_corrupt_file(tmp_path):
  (tmp_path / 'bad.pth').write_bytes(b'this is not a checkpoint')
  with pytest.raises(common.CheckpointError, match=r'bad\.pth: not a readable PyTorch checkpoint'):
    port.main([str(tmp_path / 'bad.pth'), str(tmp_path / 'out')])
  good = tmp_path / 'good.pth'
  torch.save({'a': torch.zeros(3)}, good)
  (tmp_path / 'truncated.pth').write_bytes(good.read_bytes()[:200])
  with pytest.raises(common.CheckpointError, match='not a readable PyTorch checkpoint'):
    port.main([str(tmp_path / 'truncated.pth'), str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()


class _Payload:
  """Unpickling this would call os.system (a code object reference); weights_only must refuse it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (__import__('os').system, (f'touch {self.marker}',))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / 'ran'
  torch.save({'cls_token': torch.zeros(1, 1, 768), 'evil': _Payload(marker)}, tmp_path / 'evil.pth')
  with pytest.raises(common.CheckpointError, match=r'evil\.pth: refused by torch.load\(weights_only=True\).*system'):
    port.main([str(tmp_path / 'evil.pth'), str(tmp_path / 'out')])
  assert not marker.exists() and not (tmp_path / 'out').exists()


def test_missing_file():
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    port.main(['/nonexistent/nope.pth', '/tmp/unused'])
