"""Bundles of every method: equal to predict, self-contained, verified before they load."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from g2sf_jax import manifest as manifests
from g2sf_jax.deploy import Bundle, BundleError, bundle as bundle_module, verify
from g2sf_jax.deploy.export import export
from g2sf_jax.errors import OutputExistsError
from tests import tiny_run
from tests.deploy.checks import bundle_equals_predict

ONE_RUN = pytest.mark.xdist_group(tiny_run.GROUP)


def _scans(workdir):
  raw = workdir / 'raw' / 'cube' / 'test'
  return [{'rgb': raw / d / 'rgb' / '000.png', 'xyz': raw / d / 'xyz' / '000.tiff'} for d in ('crack', 'good')]


@pytest.fixture(scope='module')
def g2sf_bundle(every_method, tmp_path_factory):
  shared, _ = every_method
  path = tmp_path_factory.mktemp('bundles') / 'g2sf'
  export(shared, 'cube', path, 'g2sf')
  return path


@ONE_RUN
@pytest.mark.parametrize('method', ['g2sf', 'btf', 'm3dm', 'cfm'])
def test_every_method_scores_as_predict_does(every_method, tmp_path, method):
  """G²SF (with its PatchCore rows IMG and PCD), BTF, M3DM and CFM: the same scores, decisions, regions and map."""
  shared, _ = every_method
  bundle = bundle_equals_predict(shared, method, tmp_path / 'bundle', _scans(shared), tmp_path)
  assert bundle.manifest['platforms'] == ['cpu', 'cuda', 'tpu'] and bundle.method == method
  for spec in bundle.manifest['programs'].values():  # lowered for each platform, serialised with it
    exported = jax.export.deserialize(bytearray((tmp_path / 'bundle' / spec['file']).read_bytes()))
    assert exported.platforms == ('cpu', 'cuda', 'tpu') and exported.nr_devices == 1


@ONE_RUN
def test_a_bundle_needs_no_training_stack(g2sf_bundle, every_method):
  """In a fresh interpreter where PyTorch, TFDS, TensorFlow, Flax, optax, orbax, ml_collections and the repository's
  experiments/ports cannot be imported, the bundle scores a scan to the same numbers."""
  shared, _ = every_method
  scan = _scans(shared)[0]
  code = f'''
import importlib.abc, json, sys
BLOCKED = ('torch', 'tensorflow', 'tensorflow_datasets', 'flax', 'optax', 'orbax', 'ml_collections', 'experiments',
           'ports', 'sklearn')
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from g2sf_jax.deploy import Bundle
result = Bundle.load({str(g2sf_bundle)!r}).score_files(rgb={str(scan['rgb'])!r}, xyz={str(scan['xyz'])!r})
print(json.dumps({{'image': result.image, 'label': result.label, 'score': result.decision.score}}))
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=shared)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  here = Bundle.load(g2sf_bundle).score_files(**scan)
  assert got == {'image': here.image, 'label': here.label, 'score': here.decision.score}


def _copy(src, tmp_path):
  dst = tmp_path / 'copy'
  shutil.copytree(src, dst)
  return dst


@ONE_RUN
@pytest.mark.parametrize('damage, message', [
    ('changed', r'arrays/scorer\.npz: content changed since it was written \(SHA-256 differs\)'),
    ('truncated', r'programs/scorer\.jax: \d+ bytes, \d+ were written'),
    ('missing', r'calibration\.json: missing'),
    ('extra', r'notes\.txt: not part of the bundle \(a file added after the export\)'),
    ('stat_cache', r'\.stat\.json: not part of the bundle'),
    ('newer', r'bundle format version 2 is newer than this g2sf-jax reads \(1\)'),
    ('platforms', r'its programs were lowered for tpu, not for this cpu process'),
    ('no_manifest', r'not a bundle \(manifest\.json missing\)'),
    ('no_field', r"manifest\.json: field 'platforms' missing or not a list"),
    ('bad_version', r"manifest\.json: field 'format_version' True is not a version number"),
    ('bad_entry', r"manifest\.json: the entry of 'calibration\.json' is not \[size, sha256\]"),
    ('bad_nested', r"manifest\.json: malformed \(KeyError: 'params'\)"),
])
def test_a_damaged_or_foreign_bundle_is_refused_naming_the_problem(g2sf_bundle, tmp_path, damage, message):
  path = _copy(g2sf_bundle, tmp_path)
  found = json.loads((path / 'manifest.json').read_text())
  if damage == 'changed':
    data = bytearray((path / 'arrays' / 'scorer.npz').read_bytes())
    data[-100] ^= 1
    (path / 'arrays' / 'scorer.npz').write_bytes(bytes(data))
  elif damage == 'truncated':
    with open(path / 'programs' / 'scorer.jax', 'r+b') as f:
      f.truncate(100)
  elif damage == 'missing':
    (path / 'calibration.json').unlink()
  elif damage == 'extra':
    (path / 'notes.txt').write_text('hello')
  elif damage == 'stat_cache':
    (path / '.stat.json').write_text('{}')
  elif damage == 'no_field':
    del found['platforms']
    (path / 'manifest.json').write_text(json.dumps(found))
  elif damage in ('bad_version', 'bad_entry', 'bad_nested'):
    if damage == 'bad_version':
      found['format_version'] = True
    elif damage == 'bad_entry':
      found['files']['calibration.json'] = 5
    else:
      del found['point_backbone']['params']
    (path / 'manifest.json').write_text(json.dumps(found))
  elif damage in ('newer', 'platforms'):
    found.update({'newer': {'format_version': 2}, 'platforms': {'platforms': ['tpu']}}[damage])
    (path / 'manifest.json').write_text(json.dumps(found))
  else:
    (path / 'manifest.json').unlink()
  with pytest.raises(BundleError, match=message):
    Bundle.load(path)


@ONE_RUN
def test_arrays_are_never_unpickled(g2sf_bundle, tmp_path):
  """An attacker who rewrites an array file and its digest gets a refusal, not code execution."""
  path = _copy(g2sf_bundle, tmp_path)
  with open(path / 'arrays' / 'scorer.npz', 'wb') as f:
    np.savez(f, **{'00000': np.array([{'evil': 1}], dtype=object)})
  found = json.loads((path / 'manifest.json').read_text())
  found['files']['arrays/scorer.npz'] = [os.path.getsize(path / 'arrays' / 'scorer.npz'),
                                          manifests.sha256_file(path / 'arrays' / 'scorer.npz')]
  (path / 'manifest.json').write_text(json.dumps(found))
  assert verify(path)['method'] == 'g2sf'
  with pytest.raises(BundleError, match=r'arrays/scorer\.npz: cannot be loaded \(ValueError: .*allow_pickle=False'):
    Bundle.load(path)


@ONE_RUN
@pytest.mark.parametrize('where', ['listed', 'program'])
def test_a_manifest_cannot_point_outside_the_bundle(g2sf_bundle, tmp_path, where):
  """A rewritten manifest that lists a file beside the bundle (digest and all), or sends a program to a file it does
  not list, is refused before that file is read: a bundle loads only what its manifest hashed, inside its folder."""
  path = _copy(g2sf_bundle, tmp_path)
  planted = path.parent / 'planted.jax'
  planted.write_bytes((path / 'programs' / 'scorer.jax').read_bytes())
  found = json.loads((path / 'manifest.json').read_text())
  if where == 'listed':
    found['files']['../planted.jax'] = [planted.stat().st_size, manifests.sha256_file(planted)]
    message = r"manifest\.json: names '\.\./planted\.jax', which is not a file inside the bundle"
  else:
    found['programs']['scorer']['file'] = str(planted)
    message = rf"manifest\.json: refers to '{planted}', which it does not list among its files"
  (path / 'manifest.json').write_text(json.dumps(found))
  with pytest.raises(BundleError, match=message):
    Bundle.load(path)


@ONE_RUN
def test_export_replaces_only_a_bundle(every_method, g2sf_bundle, tmp_path):
  shared, _ = every_method
  theirs = tmp_path / 'theirs'
  theirs.mkdir()
  (theirs / 'keep.txt').write_text('mine')
  with pytest.raises(OutputExistsError, match=r'theirs: exists and is not a bundle'):
    export(shared, 'cube', theirs, 'btf')
  assert (theirs / 'keep.txt').read_text() == 'mine' and len(list(theirs.iterdir())) == 1
  again = _copy(g2sf_bundle, tmp_path)
  before = verify(again)
  export(shared, 'cube', again, 'btf')  # a bundle is replaced whole
  assert verify(again)['method'] == 'btf' and before['method'] == 'g2sf'
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.copy')]  # no temporary folders left


def test_current_platform_names_the_backend():
  assert bundle_module.current_platform() == 'cpu'
