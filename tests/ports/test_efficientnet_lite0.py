"""The EfficientNet-Lite0 port: the shipped file converts; bad files are refused, named, and nothing is written."""
import jax
import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from g2sf_jax import checkpoints
from g2sf_jax.models import efficientnet_lite as enl
from ports import common
from ports import efficientnet_lite0 as port


@pytest.fixture(scope='module')
def state():
  return torch.load(port.packaged_path(), map_location='cpu', weights_only=True)


def _grace_hopper_lite() -> np.ndarray:
  """The portrait shipped with matplotlib, centre crop 224/256, resized to 224, Lite-normalised: [1,224,224,3]."""
  with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
    im = Image.open(f).convert('RGB')
  w, h = im.size
  c = int(min(w, h) * 224 / 256)
  im = im.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)).resize((224, 224), Image.BICUBIC)
  return ((np.asarray(im, np.float32) - enl.INPUT_MEAN) / enl.INPUT_STD)[None]


def test_packaged_file_converts_and_classifies(tmp_path, state, capsys):
  out = tmp_path / 'ck'
  assert port.main([str(out)]) == 0  # SRC defaults to the packaged file
  assert port.PACKAGED_SHA256 in capsys.readouterr().out
  variables, meta = checkpoints.load(out)
  assert meta['sha256'] == port.PACKAGED_SHA256 == common.sha256(port.packaged_path())
  assert meta['known_file'] == port.PACKAGED_DESCRIPTION
  # Every tensor is where the model expects it, with the model's shapes.
  shapes = jax.eval_shape(enl.EfficientNetLite0().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3),
                                                                                               np.float32))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, shapes, variables)) == [True] * len(
      jax.tree.leaves(shapes))
  # Spot-check layouts against the source tensors.
  np.testing.assert_array_equal(variables['params']['block3']['dw_conv']['kernel'][:, :, 0, 7],
                                state['_blocks.3._depthwise_conv.weight'][7, 0].numpy())
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state['_fc.weight'].numpy().T)
  np.testing.assert_array_equal(variables['batch_stats']['head_bn']['var'], state['_bn1.running_var'].numpy())
  # An end-to-end check of architecture + weights + preprocessing on a real photo: ImageNet's answer for Rear
  # Admiral Hopper's portrait is one of her clothes (military uniform 652, academic gown 400, mortarboard 667,
  # Windsor tie 906, bow tie 457, suit 834).
  logits, _ = jax.jit(enl.EfficientNetLite0().apply)(variables, _grace_hopper_lite())
  top5 = np.argsort(-np.asarray(logits[0]))[:5]
  assert top5[0] in (652, 400, 667) and {652, 400, 667} <= set(top5.tolist()), top5


def test_ensure_converted(tmp_path):
  out = tmp_path / 'checkpoints' / 'efficientnet_lite0'
  assert port.ensure_converted(out) == out and checkpoints.exists(out)
  stamp = (out / 'g2sf_meta.json').stat().st_mtime_ns
  port.ensure_converted(out)  # present: left alone
  assert (out / 'g2sf_meta.json').stat().st_mtime_ns == stamp


def _refused(tmp_path, obj_or_bytes, match: str, capsys) -> None:
  src = tmp_path / 'bad.pth'
  if isinstance(obj_or_bytes, bytes):
    src.write_bytes(obj_or_bytes)
  else:
    torch.save(obj_or_bytes, src)
  with pytest.raises(common.CheckpointError, match=match):
    port.load_state(src)
  out = tmp_path / 'out'
  assert port.main([str(src), str(out)]) == 1
  assert str(src) in capsys.readouterr().err
  assert not out.exists() and not (tmp_path / 'out.partial').exists()


def test_missing_key(tmp_path, state, capsys):
  bad = dict(state)
  del bad['_blocks.7._bn1.running_var']
  _refused(tmp_path, bad, r'1 missing keys: _blocks\.7\._bn1\.running_var', capsys)


def test_wrong_shape_and_unexpected_key(tmp_path, state, capsys):
  bad = dict(state)
  bad['_blocks.3._depthwise_conv.weight'] = torch.zeros(144, 1, 3, 3)
  bad['_fc.extra'] = torch.zeros(3)
  _refused(tmp_path, bad, r'(?s)wrong shapes: _blocks\.3\._depthwise_conv\.weight: expected \[144, 1, 5, 5\], '
           r'got \[144, 1, 3, 3\].*unexpected keys: _fc\.extra', capsys)


def test_vit_state_dict(tmp_path, capsys):
  vit = {'cls_token': torch.zeros(1, 1, 32), 'pos_embed': torch.zeros(1, 785, 32),
         'patch_embed.proj.weight': torch.zeros(32, 3, 8, 8), 'patch_embed.proj.bias': torch.zeros(32),
         **{f'blocks.{i}.attn.qkv.weight': torch.zeros(96, 32) for i in range(2)}}
  _refused(tmp_path, vit, r'this is a ViT-\(width 32\)/8 checkpoint .*ports\.dino_vit', capsys)


def test_point_mae_checkpoint(tmp_path, capsys):
  ckpt = {'base_model': {'module.MAE_encoder.encoder.first_conv.0.weight': torch.zeros(128, 3, 1)}, 'epoch': 3}
  _refused(tmp_path, ckpt, r'this is a Point-MAE checkpoint.*ports\.point_mae', capsys)


def test_other_efficientnets(tmp_path, state, capsys):
  b0 = dict(state)
  b0['_blocks.0._se_reduce.weight'] = torch.zeros(8, 32, 1, 1)
  _refused(tmp_path, b0, r'EfficientNet-B\* checkpoint \(it has squeeze-excite', capsys)
  lite_bigger = dict(state)
  lite_bigger.update({k.replace('_blocks.15.', '_blocks.16.'): v for k, v in state.items() if '_blocks.15.' in k})
  _refused(tmp_path, lite_bigger, r'EfficientNet-Lite checkpoint of another size \(17 blocks', capsys)


def test_corrupt_and_unsafe_files(tmp_path, capsys):
  data = port.packaged_path().read_bytes()
  _refused(tmp_path, data[:len(data) // 2], 'not a readable PyTorch checkpoint', capsys)
  _refused(tmp_path, b'\x00garbage' * 100, 'not a readable PyTorch checkpoint', capsys)
  _refused(tmp_path, {'_conv_stem.weight': torch.zeros(1), 'opt': _NotATensor()}, 'refused by torch.load', capsys)


def test_missing_source(tmp_path, capsys):
  assert port.main([str(tmp_path / 'nope.pth'), str(tmp_path / 'out')]) == 1
  assert 'nope.pth' in capsys.readouterr().err and not (tmp_path / 'out').exists()


class _NotATensor:
  """Any pickled class: weights_only loading must refuse it."""
