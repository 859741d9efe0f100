import numpy as np
import pytest
from scipy import ndimage

from g2sf_jax.methods.g2sf import synthesis
from g2sf_jax.methods.g2sf.perlin import perlin_2d

S = 200


def _disc_sample(seed, size=S, radius=70):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius ** 2
  xyz = np.stack([xx * 1e-3 + 0.01, yy * 1e-3 + 0.01, 0.5 + 0.01 * rng.random((size, size))], -1).astype(np.float32)
  xyz = np.where(disc[..., None], xyz, 0).astype(np.float32)
  orig = np.where(disc[..., None], xyz + np.float32([3e-4, -2e-4, 0]), 0).astype(np.float32)
  rgb = (rng.random((size, size, 3)) * 200 + 20).astype(np.uint8) * disc[..., None].astype(np.uint8)
  return {'rgb': rgb, 'xyz': xyz, 'xyz_orig': orig}


def _components(mask):
  labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))
  return np.bincount(labels.ravel())[1:]


def test_perlin_noise_is_zero_on_the_lattice_and_seeded():
  a = perlin_2d((64, 96), (4, 8), np.random.default_rng(0))
  assert a.shape == (64, 96) and np.abs(a).max() < 1.5 and a.std() > 0.1
  np.testing.assert_allclose(a[::16, ::12], 0, atol=1e-6)  # gradient noise vanishes at lattice points
  np.testing.assert_array_equal(a, perlin_2d((64, 96), (4, 8), np.random.default_rng(0)))
  with pytest.raises(ValueError, match='divisible'):
    perlin_2d((60, 60), (8, 8), np.random.default_rng(0))


def test_component_rules_and_skip_last_label_switch():
  m = np.zeros((100, 100), bool)
  m[0:10, 0:20] = True     # 200 px, label 1
  m[30:35, 0:10] = True    # 50 px: too small
  m[50:60, 0:20] = True    # 200 px
  m[0:50, 40:90] = True    # 2500 px: too large
  m[80:90, 50:70] = True   # 200 px, last label
  ref = synthesis._keep_components(m, skip_last_label=True)
  assert sorted(_components(ref)) == [200, 200]
  assert not ref[85, 60]
  assert sorted(_components(synthesis._keep_components(m, skip_last_label=False))) == [200, 200, 200]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_perlin_mask_size_rules_on_foreground(seed):
  yy, xx = np.mgrid[:512, :512]
  fg = (yy - 256) ** 2 + (xx - 256) ** 2 < 200 ** 2
  mask = synthesis.perlin_mask(fg, np.random.default_rng(seed))
  assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
  assert not np.any(mask.astype(bool) & ~fg)
  sizes = _components(mask)
  assert sizes.sum() >= 300 and sizes.min() >= 100 and sizes.max() <= 1600
  np.testing.assert_array_equal(mask, synthesis.perlin_mask(fg, np.random.default_rng(seed)))
  small = synthesis.perlin_mask(fg[::2, ::2].copy(), np.random.default_rng(seed))  # resized to 512 and back
  assert small.shape == (256, 256) and not np.any(small.astype(bool) & ~fg[::2, ::2])


def test_perlin_mask_gives_up_on_a_tiny_foreground():
  fg = np.zeros((64, 64), bool)
  fg[:2, :2] = True
  with pytest.raises(synthesis.SynthesisError, match='300'):
    synthesis.perlin_mask(fg, np.random.default_rng(0), perlin_size=128, max_attempts=20)


def test_an_empty_foreground_fails_at_once_without_drawing():
  rng = np.random.default_rng(0)
  state = rng.bit_generator.state
  with pytest.raises(synthesis.SynthesisError, match='fewer than the 300'):
    synthesis.perlin_mask(np.zeros((200, 200), bool), rng)  # would be 2000 noise draws otherwise
  assert rng.bit_generator.state == state  # not a single attempt was drawn


def test_clouds_that_cannot_host_an_anomaly_are_passed_over():
  empty = dict(_disc_sample(0), xyz=np.zeros((S, S, 3), np.float32))
  assert synthesis.can_host_anomaly(_disc_sample(0)['xyz']) and not synthesis.can_host_anomaly(empty['xyz'])
  names = {'a': [f'a/{i}' for i in range(6)]}
  default = synthesis.select_anomaly_sources(names, 3, seed=0)
  skipping = synthesis.select_anomaly_sources(names, 3, seed=0, usable=lambda n: n != default[0])
  assert skipping[:2] == default[1:] and default[0] not in skipping and len(skipping) == 3
  with pytest.raises(synthesis.SynthesisError, match='only 2 of its 6'):
    synthesis.select_anomaly_sources(names, 3, seed=0, usable=lambda n: n in default[1:])


def test_fusion_data_leaves_empty_training_clouds_out_and_says_so():
  from g2sf_jax.data import prepared
  from g2sf_jax.methods.g2sf import method
  logged = []

  class Ctx:
    class_name = 'disc'

    def log(self, msg, *args):
      logged.append(msg % args)

  train = [dict(_disc_sample(i), name=f'train/good/{i:03d}') for i in range(3)]
  train[1] = dict(train[1], xyz=np.zeros((S, S, 3), np.float32))
  assert method._hosts(Ctx(), train) == (0, 2)
  hosts = prepared.Subset(train, (0, 2))
  assert logged and 'train/good/001' in logged[0] and 'too few valid points' in logged[0]
  made = synthesis.synthesize_indexed(hosts, lambda i: train[0]['xyz'], ['s.tiff'], 'bagel', 'mvtec', 0, 3)
  assert made['mask'].any()


def test_fusion_data_synthesis_is_the_same_in_worker_processes(tmp_path):
  """The anomalies `fusion_data` makes in workers, which open the prepared splits themselves, equal the in-process
  ones: each is a function of (plan, index) alone."""
  import functools
  from g2sf_jax import parallel
  from g2sf_jax.data import prepared, synthetic
  from g2sf_jax.methods.g2sf import method
  raw = synthetic.generate(tmp_path / 'raw', ['cube'], n_train=3, n_test=7, size=S, seed=0)
  prepared.prepare('synthetic', raw, tmp_path / 'data', 'cube')
  names = [s['name'] for s in prepared.load_split_full('synthetic', tmp_path / 'data', 'cube', 'train')]
  plan = method._SynthesisPlan('synthetic', (('cube', str(tmp_path / 'data')),), 'cube', (0, 2),
                               tuple(f'cube/{n}' for n in names),
                               tuple(('cube', i) for i in range(len(names))), 'mvtec', 7)
  make = functools.partial(method._synthesize, plan)
  here = [make(i) for i in range(4)]
  with parallel.Workers(2) as pool:
    there = list(pool.map(make, range(4)))
  assert sum(bool(x['mask'].any()) for x in here) >= 2
  for a, b in zip(here, there, strict=True):
    assert a.keys() == b.keys() == {'rgb', 'xyz', 'mask'}
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_geometric_augment_shares_parameters_across_channels():
  rng = np.random.default_rng(0)
  base = rng.random((S, S, 3)).astype(np.float32) + 1
  for cls, ds in (('bagel', 'mvtec3d'), ('dowel', 'mvtec3d'), ('CandyCane', 'eyecandies')):
    out = synthesis.geometric_augment(np.concatenate([base] * 3, -1), cls, ds, np.random.default_rng(3))
    np.testing.assert_array_equal(out[..., :3], out[..., 3:6])
    np.testing.assert_array_equal(out[..., :3], out[..., 6:])
    assert np.isin(out[out != 0], base).all()  # nearest: only input values or the 0 fill
    assert (out == 0).any() and not np.array_equal(out[..., :3], base)
  assert synthesis.geometric_params('dowel', 'mvtec3d')['degrees'] == 10
  assert synthesis.geometric_params('bagel', 'mvtec3d')['flips']


def test_each_photometric_augmenter_runs_and_is_seeded():
  img = _disc_sample(0)['rgb']
  for aug in synthesis.PHOTOMETRIC:
    a = aug(img, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, aug(img, np.random.default_rng(5)))
  assert not np.array_equal(synthesis.photometric_augment(img, np.random.default_rng(1)), img)


@pytest.mark.parametrize('dataset', ['mvtec3d', 'eyecandies'])
def test_synthesize_pastes_only_in_the_mask_and_is_reproducible(dataset):
  normal, donor, source = _disc_sample(1), _disc_sample(2), _disc_sample(3)['xyz']
  out = synthesis.synthesize(normal, donor, source, 'bagel', dataset, np.random.default_rng(7))
  again = synthesis.synthesize(normal, donor, source, 'bagel', dataset, np.random.default_rng(7))
  for k in ('rgb', 'xyz', 'mask'):
    np.testing.assert_array_equal(out[k], again[k])
  assert out['rgb'].dtype == np.uint8 and out['xyz'].dtype == np.float32 and set(np.unique(out['mask'])) <= {0, 255}
  mask = out['mask'] > 0
  assert mask.sum() >= 300
  stack = np.concatenate([normal['rgb'].astype(np.float32), normal['xyz'], normal['xyz_orig']], -1)
  aug = synthesis.geometric_augment(stack, 'bagel', dataset, np.random.default_rng(7))  # the first draws
  np.testing.assert_array_equal(out['xyz'][~mask], aug[..., 3:6][~mask])
  np.testing.assert_array_equal(out['rgb'][~mask], aug[..., :3][~mask].astype(np.uint8))
  pasted = mask & synthesis.foreground(out['xyz'])
  assert pasted.any()
  np.testing.assert_array_equal(out['xyz'][pasted][:, :2], aug[..., 6:8][pasted])  # x, y from xyz_orig
  z_shift = out['xyz'][pasted][:, 2].mean() - aug[..., 5][pasted & synthesis.foreground(aug[..., 3:6])].mean()
  assert abs(z_shift) < 0.01
  if dataset == 'eyecandies':
    assert not np.any(mask & ~synthesis.foreground(aug[..., 3:6]))
  other = synthesis.synthesize(normal, donor, source, 'bagel', dataset, np.random.default_rng(8))
  assert not np.array_equal(other['mask'], out['mask'])


def test_shifted_component_replaces_rgb_and_recentres_points():
  n = _disc_sample(4)
  fg = synthesis.foreground(n['xyz'])
  comp = np.zeros((S, S), bool)
  comp[5:25, 5:25] = True  # off the object: must be shifted onto it
  a_img = np.full((S, S, 3), 7, np.uint8)
  a_xyz = np.zeros((S, S, 3), np.float32)
  a_xyz[5:25, 5:25] = (1.0, 2.0, 3.0)
  img, xyz, target = synthesis.cut_paste(n['rgb'], n['xyz'], n['xyz_orig'], fg, comp, a_img, a_xyz,
                                         np.random.default_rng(0))
  assert target.sum() == 19 * 19  # the reference's half-open bounding box drops one row and column
  assert fg[target].mean() > 0.2
  assert (img[target] == 7).all()
  z0 = n['xyz'][target & fg][:, 2].mean()
  assert 2e-4 <= abs(xyz[target][:, 2].mean() - z0) <= 2e-3 + 1e-6
  np.testing.assert_array_equal(xyz[target][:, :2], n['xyz_orig'][target][:, :2])


def test_select_anomaly_sources():
  paths = {'a': [f'/d/a/{i:03d}.tiff' for i in range(20)], 'b': [f'/d/b/{i:03d}.tiff' for i in range(12)]}
  got = synthesis.select_anomaly_sources(paths, 8, seed=0)
  assert len(got) == 16 and set(got[:8]) <= set(paths['a']) and set(got[8:]) <= set(paths['b'])
  assert len(set(got)) == 16 and got == synthesis.select_anomaly_sources(paths, 8, seed=0)
  assert got != synthesis.select_anomaly_sources(paths, 8, seed=1)
  with pytest.raises(ValueError, match="'b'"):
    synthesis.select_anomaly_sources(paths, 13)


def test_synthesize_indexed_is_a_function_of_seed_and_index():
  train = [_disc_sample(i) for i in range(3)]
  sources = [_disc_sample(10)['xyz']]
  a = synthesis.synthesize_indexed(train, lambda i: sources[i], ['s.tiff'], 'bagel', 'mvtec3d', 0, 5)
  b = synthesis.synthesize_indexed(train, lambda i: sources[i], ['s.tiff'], 'bagel', 'mvtec3d', 0, 5)
  c = synthesis.synthesize_indexed(train, lambda i: sources[i], ['s.tiff'], 'bagel', 'mvtec3d', 0, 6)
  np.testing.assert_array_equal(a['mask'], b['mask'])
  assert not np.array_equal(a['mask'], c['mask'])


def test_source_resize_uses_the_torch_nearest_rule():
  x = np.arange(10 * 10 * 3, dtype=np.float32).reshape(10, 10, 3)
  got = synthesis.torch_nearest(x, 4, 4)
  rows = np.floor(np.arange(4) * 10 / 4).astype(int)  # src = floor(dst·in/out): 0, 2, 5, 7
  np.testing.assert_array_equal(got, x[rows][:, rows])
