"""The report writes every file, its numbers round-trip, and every HTML link points at a file that exists."""
import html.parser
import json
import time

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiments import report
from g2sf_jax import metrics


def make_class(name, seed, rows=('IMG', 'PCD', 'FUS'), n=8, size=32, num_thresholds=100):
  rng = np.random.default_rng(seed)
  labels = np.array([1, 0] * (n // 2))
  masks = np.zeros((n, size, size), dtype=bool)
  for i in np.flatnonzero(labels):
    y, x = rng.integers(2, size - 10, 2)
    masks[i, y:y + 8, x:x + 6] = True
  row_results, fused = {}, None
  for k, row in enumerate(rows):
    maps = rng.uniform(size=masks.shape) + (0.3 + 0.2 * k) * masks
    scores = maps.reshape(n, -1).max(axis=1)
    row_results[row] = report.RowResult.compute(labels, scores, masks, maps, num_thresholds=num_thresholds)
    fused = maps, scores
  images = [report.ImageRecord(name=f'test/{"crack" if labels[i] else "good"}/{i:03d}',
                               rgb=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                               anomaly_map=fused[0][i], mask=masks[i], label=int(labels[i]), score=fused[1][i])
            for i in range(n)]
  return report.ClassResult(name=name, rows=row_results, images=images, map_row=rows[-1]), (labels, masks)


class _Links(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links += [v for k, v in attrs if k in ('href', 'src') and not v.startswith('#')]


def test_row_result_compute_matches_metrics():
  result, (labels, masks) = make_class('bagel', seed=0, rows=('FUS',))
  row = result.rows['FUS']
  assert row.image_auroc == pytest.approx(roc_auc_score(labels, row.image_scores))
  assert set(row.aupro.values) == set(metrics.DEFAULT_LIMITS)
  assert row.aupro.num_thresholds == 100


def test_write_report_files_and_round_trip(tmp_path, capsys):
  classes = [make_class('bagel', 0)[0], make_class('cable_gland', 1)[0],
             make_class('rope', 2, rows=('IMG', 'FUS'), num_thresholds='exact')[0]]
  start = time.perf_counter()
  page = report.write_report(tmp_path, classes, title='unit test')
  elapsed = time.perf_counter() - start
  assert page == tmp_path / 'report.html'
  for name in ('results.md', 'results.json', 'report.html'):
    assert (tmp_path / name).is_file()
  assert not list(tmp_path.rglob('*.tmp'))
  # JSON round-trips to the given numbers (rounded to 4 decimals, algorithms.md §5).
  table = json.loads((tmp_path / 'results.json').read_text())
  assert table['rows'] == ['IMG', 'PCD', 'FUS']
  for c in classes:
    for row, res in c.rows.items():
      got = table['classes'][c.name][row]
      assert got['I-AUROC'] == round(res.image_auroc, 4)
      assert got['P-AUROC'] == round(res.pixel_auroc, 4)
      for limit, label in zip((0.3, 0.1, 0.05, 0.01), ('30', '10', '5', '1')):
        assert got[f'AUPRO@{label}%'] == round(res.aupro[limit], 4)
  # The mean is over the classes that have the row: PCD is missing for 'rope'.
  pcd = [table['classes'][n]['PCD']['AUPRO@30%'] for n in ('bagel', 'cable_gland')]
  fus = [table['classes'][n]['FUS']['I-AUROC'] for n in ('bagel', 'cable_gland', 'rope')]
  assert table['mean']['PCD']['AUPRO@30%'] == pytest.approx(round(sum(pcd) / 2, 4), abs=1e-12)
  assert table['mean']['FUS']['I-AUROC'] == pytest.approx(round(sum(fus) / 3, 4), abs=1e-12)
  assert table['num_classes'] == {'IMG': 3, 'PCD': 2, 'FUS': 3}
  assert table['aupro_thresholds'] == [100, 'exact']
  # Markdown (file and stdout) holds the values, with a '—' nowhere (every row has every table column).
  md = (tmp_path / 'results.md').read_text()
  assert md.strip() in capsys.readouterr().out
  fus_bagel = table['classes']['bagel']['FUS']
  assert (f'| bagel | FUS | {fus_bagel["I-AUROC"]:.4f} | {fus_bagel["P-AUROC"]:.4f} | '
          f'{fus_bagel["AUPRO@30%"]:.4f} | {fus_bagel["AUPRO@1%"]:.4f} |') in md
  assert f'| PCD | 2 | {table["mean"]["PCD"]["I-AUROC"]:.4f} |' in md
  # Every link and image of the page exists; one overlay per test image; curves per class.
  parser = _Links()
  parser.feed(page.read_text())
  assert parser.links and all((tmp_path / link).is_file() for link in parser.links)
  for c in classes:
    assert sorted(p.name for p in (tmp_path / c.name / 'overlays').iterdir()) == sorted(
        f'{im.name.replace("/", "_")}.png' for im in c.images)
    assert {'roc.png', 'pro.png'} <= {p.name for p in (tmp_path / c.name).iterdir()}
    assert f'{c.name}/roc.png' in parser.links and f'{c.name}/pro.png' in parser.links
  # Defects first in each class's thumbnail grid.
  bagel = [link for link in parser.links if link.startswith('bagel/overlays/')]
  assert bagel[0].startswith('bagel/overlays/test_crack_') and bagel[-1].startswith('bagel/overlays/test_good_')
  assert elapsed < 20


def test_overlay_colours_and_contour():
  rgb = np.full((16, 16, 3), 100, dtype=np.uint8)
  amap = np.zeros((16, 16))
  amap[:, 8:] = 2.0
  mask = np.zeros((16, 16), dtype=bool)
  mask[4:12, 4:12] = True
  out = report.overlay(rgb, amap, mask, map_range=(0.0, 2.0), alpha=0.5, cmap='jet')
  assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
  # Far from the contour: half the RGB plus half the colour-map end points (jet: dark blue at 0, dark red at 1).
  low, high = (np.round(np.array(matplotlib.colormaps['jet']([0.0, 1.0]))[:, :3] * 255))
  np.testing.assert_allclose(out[0, 0], np.round(0.5 * 100 + 0.5 * low), atol=0.5)
  np.testing.assert_allclose(out[0, 15], np.round(0.5 * 100 + 0.5 * high), atol=0.5)
  # The contour (boundary of the mask, dilated by one pixel) is white; the mask interior is not.
  assert (out[4, 4:12] == 255).all() and (out[3, 6] == 255).all()
  assert not (out[8, 8] == 255).all() and not (out[0, 0] == 255).all()


def test_bad_inputs(tmp_path):
  result, _ = make_class('bagel', 0, rows=('FUS',))
  with pytest.raises(ValueError, match='unique'):
    report.write_report(tmp_path, [result, result], echo=False)
  bad = report.ClassResult(name='x', rows=result.rows,
                           images=[report.ImageRecord('test/a/000', np.zeros((8, 8, 3)), np.zeros((8, 8)),
                                                      np.zeros((8, 8)), 1)])
  with pytest.raises(ValueError, match=r"'test/a/000'.*rgb uint8"):
    report.write_report(tmp_path, [bad], echo=False)


def test_a_new_report_replaces_the_old_one_whole(tmp_path):
  """Files of an earlier report (a class no longer in the run) do not stay behind; a foreign folder is kept."""
  first, _ = make_class('bagel', 0)
  second, _ = make_class('rope', 1)
  report.write_report(tmp_path / 'r', [first], echo=False)
  report.write_report(tmp_path / 'r', [second], echo=False)
  assert not (tmp_path / 'r' / 'bagel').exists() and (tmp_path / 'r' / 'rope' / 'roc.png').is_file()
  page = (tmp_path / 'r' / 'report.html').read_text()
  assert 'rope/roc.png' in page and '.tmp' not in page  # relative links, none into the temporary folder
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep')
  with pytest.raises(FileExistsError, match='not an output this command replaces'):
    report.write_report(tmp_path / 'mine', [second], echo=False)
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep'
