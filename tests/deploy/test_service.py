"""The scoring service as a real process on a loopback port, spoken to with a real HTTP client (httpx)."""
import base64
import concurrent.futures
import io as stdio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from experiments import predict
from g2sf_jax import io
from g2sf_jax.deploy.export import export
from tests import tiny_run

ONE_RUN = pytest.mark.xdist_group(tiny_run.GROUP)
REPO = Path(__file__).resolve().parents[2]


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(every_method, tmp_path_factory):
  """`experiments.serve` with the G²SF and BTF bundles of the tiny run: (base URL, workdir, log path)."""
  shared, _ = every_method
  root = tmp_path_factory.mktemp('serve')
  for method in ('g2sf', 'btf'):
    export(shared, 'cube', root / method, method)
  port, log = _port(), root / 'server.log'
  with open(log, 'w') as err:
    proc = subprocess.Popen([sys.executable, '-m', 'experiments.serve', '--bundle', f'cube={root / "g2sf"}',
                             '--bundle', f'btf={root / "btf"}', '--port', str(port), '--max_batch', '2',
                             '--max_wait_ms', '200', '--queue', '2', '--max_upload_mb', '2'],
                            cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}'
  try:
    deadline = time.monotonic() + 300
    while True:
      try:
        if httpx.get(url + '/health', timeout=5).status_code == 200:
          break
      except httpx.TransportError:
        pass
      if proc.poll() is not None or time.monotonic() > deadline:
        raise AssertionError(f'the server did not start:\n{log.read_text()[-3000:]}')
      time.sleep(0.5)
    yield url, shared, log
  finally:
    proc.terminate()
    proc.wait(timeout=60)


def _scan(shared, defect='crack'):
  raw = shared / 'raw' / 'cube' / 'test' / defect
  return raw / 'rgb' / '000.png', raw / 'xyz' / '000.tiff'


def _post(url, files, query='?model=cube', timeout=300):
  return httpx.post(url + '/score' + query, files=files, timeout=timeout)


def _files(rgb, xyz):
  return {'rgb': ('a.png', Path(rgb).read_bytes(), 'image/png'),
          'xyz': ('a.tiff', Path(xyz).read_bytes(), 'image/tiff')}


@ONE_RUN
def test_answers_equal_predict(server, tmp_path):
  url, shared, _ = server
  rgb, xyz = _scan(shared)
  answer = _post(url, _files(rgb, xyz), '?model=cube&map=png')
  assert answer.status_code == 200, answer.text
  got = answer.json()
  want = predict.main(['--workdir', str(shared), '--method', 'g2sf', '--rgb', str(rgb), '--xyz', str(xyz),
                       '--out', str(tmp_path / 'map.png')])
  for field in ('status', 'label', 'row', 'image_scores', 'score', 'raw_score', 'threshold', 'defect_pixels',
                'regions', 'problems'):
    assert got[field] == json.loads(json.dumps(want[field])), field  # (JSON has lists where predict has tuples)
  assert got['model'] == 'cube' and got['method'] == 'g2sf' and got['class'] == 'cube' and got['request_id']
  png = np.asarray(Image.open(stdio.BytesIO(base64.b64decode(got['map_png']))))
  assert np.array_equal(png, io.read_mask_png(tmp_path / 'map.png'))
  btf = _post(url, _files(rgb, xyz), '?model=btf').json()
  assert btf['method'] == 'btf' and set(btf['image_scores']) == {'BTF'}
  assert httpx.get(url + '/model?model=btf').json()['method'] == 'btf'
  health = httpx.get(url + '/health').json()
  assert health['status'] == 'ok' and health['models'] == ['btf', 'cube']


@ONE_RUN
def test_concurrent_requests_are_batched_and_answered_alike(server):
  url, shared, log = server
  files = _files(*_scan(shared, 'good'))
  alone = _post(url, files).json()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    answers = list(pool.map(lambda _: _post(url, files), range(4)))
  assert [a.status_code for a in answers] == [200] * 4
  for a in answers:
    assert {k: v for k, v in a.json().items() if k != 'request_id'} == {k: v for k, v in alone.items()
                                                                         if k != 'request_id'}
  assert 'model cube: scored a batch of 2' in log.read_text()


@ONE_RUN
def test_a_full_queue_answers_503_and_the_rest_are_served(server):
  url, shared, _ = server
  files = _files(*_scan(shared, 'good'))
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    answers = list(pool.map(lambda _: _post(url, files), range(12)))
  codes = [a.status_code for a in answers]
  assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
  full = next(a for a in answers if a.status_code == 503)
  assert 'scans are waiting already; retry later' in full.json()['error'] and full.headers['retry-after'] == '1'


def _tiff_bytes(array) -> bytes:
  buffer = stdio.BytesIO()
  tifffile.imwrite(buffer, array, photometric='rgb')
  return buffer.getvalue()


@ONE_RUN
@pytest.mark.parametrize('case, status, message', [
    ('missing', 400, "missing part 'xyz': this model needs rgb, xyz"),
    ('unknown', 400, "unknown part 'depth'; this model takes ['rgb', 'xyz']"),
    ('wrong_type', 415, "part 'xyz': expected a TIFF file"),
    ('malformed', 422, "part 'xyz'"),
    ('unscorable', 422, 'the scan cannot be scored: 0 valid points'),
    ('too_big', 413, 'exceeds the limit'),
    ('threshold', 400, "query threshold='2': expected a normalised score in (0, 1)"),
    ('model', 404, "no model 'bolt'; served: ['btf', 'cube']"),
    ('no_model', 400, 'several models are served; choose one with ?model='),
    ('not_multipart', 415, 'expected a multipart/form-data body'),
])
def test_bad_requests_get_a_one_line_reason_and_the_server_lives_on(server, case, status, message):
  url, shared, _ = server
  rgb, xyz = _scan(shared)
  files, query = _files(rgb, xyz), '?model=cube'
  if case == 'missing':
    del files['xyz']
  elif case == 'unknown':
    files['depth'] = files['rgb']
  elif case == 'wrong_type':
    files['xyz'] = files['rgb']
  elif case == 'malformed':
    files['xyz'] = ('a.tiff', b'II*\x00' + b'\x00' * 64, 'image/tiff')
  elif case == 'unscorable':
    files['xyz'] = ('a.tiff', _tiff_bytes(np.zeros((200, 200, 3), np.float32)), 'image/tiff')
  elif case == 'too_big':
    files['xyz'] = ('a.tiff', b'II*\x00' + bytes(3 << 20), 'image/tiff')
  elif case == 'threshold':
    query = '?model=cube&threshold=2'
  elif case == 'model':
    query = '?model=bolt'
  elif case == 'no_model':
    query = ''
  if case == 'not_multipart':
    answer = httpx.post(url + '/score?model=cube', content=b'{}', headers={'content-type': 'application/json'})
  else:
    answer = _post(url, files, query)
  assert answer.status_code == status, answer.text
  body = answer.json()
  assert message in body['error'] and '\n' not in body['error'] and body['request_id']
  assert httpx.get(url + '/health').status_code == 200


@ONE_RUN
def test_each_request_is_logged_with_its_id_duration_and_outcome(server):
  url, shared, log = server
  answer = _post(url, _files(*_scan(shared)))
  request_id = answer.json()['request_id']
  line = next(line for line in log.read_text().splitlines() if request_id in line)
  assert f'request {request_id} POST /score → 200 in' in line and ' ms ' in line
  assert line.rstrip().endswith(answer.json()['label'])
  assert json.loads(httpx.get(url + '/model?model=cube').text)['format'] == 'g2sf-jax bundle'


def test_eyecandies_parts_are_read_as_predict_reads_a_sample(tmp_path):
  """The four uploaded files of an Eyecandies scan land under the names its reader expects: the same scan."""
  import types

  from g2sf_jax import data
  from g2sf_jax.deploy import service
  from tests.data.test_prepared import _write_eyecandies_sample
  _write_eyecandies_sample(tmp_path, '07', 0, None)
  kind = data.get('eyecandies')
  bundle = types.SimpleNamespace(dataset='eyecandies', kind=kind, clean=True)
  files = {part: (tmp_path / f'07{name[len("scan"):]}').read_bytes() for part, (name, _) in
           service.RAW_PARTS['eyecandies'].items()}
  got = service._preprocess(bundle, files, service.Settings())
  want = kind.load_entry(kind.scan_entry(sample=tmp_path / '07'), False, clean=True)
  assert np.array_equal(got.xyz, want.xyz) and np.array_equal(got.rgb, want.rgb)
  with pytest.raises(service.RequestError, match="part 'depth'"):
    service._preprocess(bundle, dict(files, depth=b'\x89PNG\r\n\x1a\n' + bytes(20)), service.Settings())
