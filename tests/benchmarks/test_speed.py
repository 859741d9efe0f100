"""`benchmarks.speed --quick`: every stage gives a row with positive finite times (no timing limits)."""
import dataclasses
import math

import pytest

from benchmarks import speed, speed_stages


def test_quick_run_has_every_row_and_writes_markdown(tmp_path):
  out = tmp_path / 'BENCHMARKS.md'
  out.write_text('old generated table\n' + speed.KEEP_MARKER + '\nhand-written analysis\n')
  rows, limits = speed.main(['--quick', '--out', str(out)])

  counts = {}
  for r in rows:
    counts[r.stage] = counts.get(r.stage, 0) + 1
    for value in (r.ours_s, r.ref_s, r.ratio):
      assert math.isfinite(value) and value > 0, (r.what, value)
    assert math.isnan(r.compile_s) or math.isfinite(r.compile_s), r.what
  assert counts == {'clean': 1, 'group': 4, 'vit': 1, 'point_mae': 1, 'extract': 1, 'coreset': 2,
                    'knn': len(speed_stages.QUICK.knn_banks),
                    'aupro': 1, 'lspn': 1}
  assert all(math.isfinite(r.gflop) and r.gflop > 0 for r in rows if r.stage in ('vit', 'point_mae', 'knn', 'lspn'))

  assert [m.stage for m in limits] == ['bank_rss', 'bank_rss', 'peak']
  rss, floor, peak = limits
  assert peak.jax_value > 0 and peak.torch_value > 0
  assert rss.unit == 'GiB' and math.isfinite(rss.jax_value) and rss.jax_value > 0
  assert floor.unit == '× floor' and math.isfinite(floor.jax_value) and floor.jax_value > 0
  assert 'picks equal the reference mode' in floor.note
  for r in rows + limits:  # the load average around every stage is recorded
    assert all(math.isfinite(x) and x >= 0 for x in r.load), r.what

  assert 'labels identical' in next(r for r in rows if r.stage == 'clean').note
  text = out.read_text()
  for r in rows + limits:
    assert r.what in text
  assert 'old generated table' not in text and text.rstrip().endswith('hand-written analysis')
  assert 'python -m benchmarks.speed --quick --out' in text


def test_flop_counts_match_hand_counts():
  # One block of ViT-B/8: 24·T·D² + 4·T²·D with T = 785, D = 768; patch embedding 2·784·192·768.
  block = 24 * 785 * 768 ** 2 + 4 * 785 ** 2 * 768
  assert speed_stages.vit_flops() == 12 * block + 2 * 784 * 192 * 768
  # PointMAE 512×128: per point 2·(3·128 + 128·256 + 512·512 + 512·384); then the 12 blocks over 512 tokens.
  per_point = 2 * (384 + 32_768 + 262_144 + 196_608)
  blocks = 12 * (24 * 512 * 384 ** 2 + 4 * 512 ** 2 * 384)
  assert speed_stages.point_mae_flops(512, 128) == 512 * 128 * per_point + 2 * 512 * (3 * 128 + 128 * 384) + blocks


def test_unknown_stage_is_named():
  with pytest.raises(ValueError, match='nope'):
    speed.run(['vit', 'nope'], quick=True)


def test_a_loaded_stage_is_flagged():
  assert speed._load((0.4, 1.2)) == '0.4 → 1.2'
  assert '⚠' in speed._load((speed.LOAD_LIMIT + 0.1, 0.4))
  assert '⚠' not in speed._load((0.4, speed.LOAD_LIMIT + 0.5))  # its own threads raised it
  assert speed._load((float('nan'), 1.0)) == '–'
  row = speed_stages.Row('x', 'a stage', 1.0, 1.0, 0.0, 'ref', load=(0.9, 1.9))
  busy_start = ((speed.LOAD_LIMIT + 0.4,) * 3, (1.0,) * 3)  # decaying from an earlier job: the stages waited
  info = dict(nproc=2, cpu='cpu', ram='1 GiB', jax_devices='cpu:0', torch_threads=2, niceness=0, python='3',
              jax='0', flax='0', torch='0', numpy='0')
  assert 'shared with other running jobs' not in speed.markdown([row], [], info, 'cmd', busy_start, 3, False)
  loaded = dataclasses.replace(row, load=(speed.LOAD_LIMIT + 0.1, 1.9))
  assert 'shared with other running jobs' in speed.markdown([loaded], [], info, 'cmd', busy_start, 3, False)
