"""ports.point_mae: wrapper/prefix handling, ignored keys, failure modes, provenance (algorithms.md §2.6)."""
import numpy as np
import pytest
import torch

from g2sf_jax import checkpoints
from ports import common
from ports import dino_vit
from ports import point_mae as port


def encoder_state() -> dict[str, np.ndarray]:
  return {k: np.zeros(e.shape, np.float32) for k, e in port.table().items()}


def test_official_hash_is_known():
  assert common.KNOWN_FILES['27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20'].startswith('Point-MAE')


def _pretrain_file(tmp_path):
  """A random Point-MAE pretrain file in the official layout (wrapped, prefixed, with decoder entries)."""
  rng = np.random.default_rng(0)
  state = {k: torch.from_numpy(rng.normal(size=e.shape).astype(np.float32)) for k, e in port.table().items()}
  ckpt = {'base_model': {'module.MAE_encoder.' + k: v for k, v in state.items()}}
  ckpt['base_model'].update({'module.MAE_decoder.norm.weight': torch.ones(384),
                             'module.mask_token': torch.zeros(1, 1, 384),
                             'module.increase_dim.0.weight': torch.zeros(96, 384, 1),
                             'module.MAE_encoder.encoder.first_conv.1.num_batches_tracked': torch.tensor(5)})
  src = tmp_path / 'pretrain.pth'
  torch.save(ckpt, src)
  return src, state


def test_a_folder_of_other_files_survives_a_port_into_it(tmp_path, monkeypatch, capsys):
  src, _ = _pretrain_file(tmp_path)
  theirs = tmp_path / 'my_models'
  theirs.mkdir()
  (theirs / 'notes.txt').write_text('keep me')
  with pytest.raises(SystemExit, match='not a g2sf-jax checkpoint'):
    common.run_cli(lambda: port.main([str(src), str(theirs)]))
  assert [p.name for p in theirs.iterdir()] == ['notes.txt'] and (theirs / 'notes.txt').read_text() == 'keep me'
  monkeypatch.setenv('G2SF_HOME', str(tmp_path / 'home'))  # no OUT_DIR: where the configs look
  assert port.main([str(src)]) == 0
  assert checkpoints.exists(tmp_path / 'home' / 'checkpoints' / 'point_mae')
  assert port.main([str(src)]) == 0  # an earlier conversion of ours is replaced


@pytest.mark.parametrize('wrapper', ['model', 'state_dict'])
def test_other_wrappers_and_bfloat16_convert(tmp_path, wrapper):
  """Checkpoints saved by other training scripts: `{'model': …}` / `{'state_dict': …}` and bfloat16 tensors."""
  src, state = _pretrain_file(tmp_path)
  torch.save({wrapper: {k: v.to(torch.bfloat16) for k, v in torch.load(src, weights_only=True)['base_model'].items()}},
             tmp_path / 'other.pth')
  assert port.main([str(tmp_path / 'other.pth'), str(tmp_path / 'out')]) == 0
  tree, _ = checkpoints.load(tmp_path / 'out')
  w = state['encoder.second_conv.0.weight'].to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(tree['params']['encoder']['second_conv_0']['kernel'], w[:, :, 0].T)


def test_a_port_never_replaces_another_models_checkpoint(tmp_path):
  src, _ = _pretrain_file(tmp_path)
  checkpoints.save(tmp_path / 'dino', {'w': np.ones(2, np.float32)}, {'model': 'dino_vit_b8'})
  with pytest.raises(SystemExit, match=r"dino: holds another checkpoint \({'model': 'dino_vit_b8'}"):
    common.run_cli(lambda: port.main([str(src), str(tmp_path / 'dino')]))
  assert checkpoints.load(tmp_path / 'dino')[1] == {'model': 'dino_vit_b8'}


def test_wrapped_prefixed_checkpoint_converts_and_records_provenance(tmp_path, monkeypatch):
  src, state = _pretrain_file(tmp_path)
  monkeypatch.setitem(common.KNOWN_FILES, common.sha256(src), 'test release')
  assert port.main([str(src), str(tmp_path / 'out')]) == 0
  tree, meta = checkpoints.load(tmp_path / 'out')
  assert meta['known_file'] == 'test release' and meta['sha256'] == common.sha256(src)
  w = state['encoder.second_conv.0.weight'].numpy()
  np.testing.assert_array_equal(tree['params']['encoder']['second_conv_0']['kernel'], w[:, :, 0].T)
  np.testing.assert_array_equal(tree['batch_stats']['encoder']['first_conv_1']['var'],
                                state['encoder.first_conv.1.running_var'].numpy())
  np.testing.assert_array_equal(tree['params']['blocks_7']['attn']['qkv']['kernel'],
                                state['blocks.blocks.7.attn.qkv.weight'].numpy().T)
  assert 'bias' not in tree['params']['blocks_7']['attn']['qkv']


def test_missing_and_wrong_shape_reported_together():
  state = encoder_state()
  del state['blocks.blocks.11.mlp.fc2.bias']
  state['pos_embed.0.weight'] = np.zeros((128, 4), np.float32)
  state['cls_head_finetune.0.weight'] = np.zeros((256, 768), np.float32)
  with pytest.raises(common.CheckpointError) as e:
    port.convert_state(state, 'pretrain.pth')
  msg = str(e.value)
  assert 'pretrain.pth' in msg and '1 missing keys: blocks.blocks.11.mlp.fc2.bias' in msg
  assert 'pos_embed.0.weight: expected [128, 3], got [128, 4]' in msg and 'cls_head_finetune.0.weight' in msg


def test_vit_given_to_point_mae_port_is_named(tmp_path):
  state = {k: torch.zeros(e.shape) for k, e in dino_vit.table(dino_vit.VitArch(img_size=16, dim=64, depth=1,
                                                                                 num_heads=1)).items()}
  state['patch_embed.proj.weight'] = torch.zeros(768, 3, 8, 8)
  torch.save(state, tmp_path / 'dino.pth')
  with pytest.raises(common.CheckpointError, match=r'ViT-B/8 checkpoint.*python -m ports.dino_vit'):
    port.main([str(tmp_path / 'dino.pth'), str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()


def test_not_a_state_dict(tmp_path):
  torch.save([torch.zeros(2)], tmp_path / 'list.pth')
  with pytest.raises(common.CheckpointError, match='expected the Point-MAE state dict to be a dict of tensors'):
    port.main([str(tmp_path / 'list.pth'), str(tmp_path / 'out')])
