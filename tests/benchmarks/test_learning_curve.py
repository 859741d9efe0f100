"""`benchmarks.learning_curve` on tiny scans: a row per method row and a cell per K, written to the work directory."""
import json
import math

import pytest

from benchmarks import learning_curve


def test_tiny_curve_has_every_row_and_k(tmp_path):
  """BTF trains on 2 and on all 3 scans; M3DM cannot (its UFF batch of 8 needs 8 scans): its rows say why, without
  taking IMG and PCD, which M3DM shares with G²SF, from a method listed before it."""
  args = ['--ks', '2,all', '--n_train', '3', '--methods', 'btf,m3dm', '--workdir', str(tmp_path / 'w'),
          '--set', 'synthetic.size=160', '--set', 'synthetic.n_test=4', '--set', 'synthetic.classes=cube',
          '--set', f'checkpoints.efficientnet_lite0={tmp_path / "ckpt"}']
  curve = learning_curve.main(args)
  assert list(curve) == ['BTF', 'IMG', 'PCD', 'M3DM'] and list(curve['BTF']) == ['2', 'all']
  for cell in curve['BTF'].values():
    assert 0 <= cell['I-AUROC'] <= 1 and 0 <= cell['false_reject_rate'] <= 1 and cell['minutes'] > 0
  for row in ('IMG', 'PCD', 'M3DM'):
    assert all('m3dm.uff.batch_size=8' in curve[row][k]['error'] for k in ('2', 'all')), curve[row]
  runs = json.loads((tmp_path / 'w' / 'learning_curve.json').read_text())
  assert runs == json.loads(json.dumps(curve))
  text = (tmp_path / 'w' / 'learning_curve.md').read_text()
  assert '| BTF |' in text and 'all (3)' in text and 'K=2' in text and '--set synthetic.size=160' in text
  assert '| M3DM | not trained* | not trained** |' in text and '\n** UFF training: 3 training samples' in text
  log = (tmp_path / 'w' / 'run.log').read_text()
  assert math.isfinite(curve['BTF']['2']['AUPRO@30%'] or 0) and 'btf/banks cube' in log


@pytest.mark.parametrize('bad, message', [(['--ks', '0'], 'not "all" or a count'),
                                          (['--methods', 'padim'], "unknown method 'padim'"),
                                          (['--set', 'synthetic.sise=3'], 'synthetic.sise=3: not a config field')])
def test_bad_arguments_name_the_flag(bad, message, capsys):
  with pytest.raises(SystemExit):
    learning_curve.main(bad)
  assert message in capsys.readouterr().err
