"""The evaluation report of one run: result tables, curves, anomaly-map overlays and a static HTML page.

The runner computes one `RowResult` per class and scoring row (IMG, PCD, FUS as the reference reports them; BTF
or single-modality runs have other rows), wraps them with the test images into a `ClassResult`, and calls
`write_report(out_dir, class_results)`, which writes into a new folder that then replaces `out_dir` in one rename
(no file of an earlier report, such as the overlays of a class no longer in the run, stays behind; a folder that
is not a report is never replaced):

  out_dir/results.md            mean and per-class tables (also printed to stdout)
  out_dir/results.json          the same numbers with every AUPRO limit
  out_dir/report.html           links/embeds everything below by relative paths
  out_dir/<class>/roc.png       image-level ROC curves of every row
  out_dir/<class>/pro.png       PRO curves of every row up to the largest AUPRO limit
  out_dir/<class>/overlays/<image name>.png   the normalised anomaly map over the scan at its own resolution (at
                                least 448 px), ground truth outlined in white, the predicted defect mask in cyan
  out_dir/<class>/views/<image name>.png      a rendered 3-D view of the cleaned cloud coloured by the same scores

Values are rounded to 4 decimals per class and the mean is the unweighted mean of the rounded per-class values
over the classes that have the value (algorithms.md §5). A class gets only the metrics its labels allow: no test
scans, none; good test scans only, the false-reject rate; defects without masks, the image metrics only. Besides
the AUROC/AUPRO table, each row's decisions at the calibrated threshold are counted against the labels: the
confusion matrix, precision, recall, F1, false-reject and escape rates.
"""
import dataclasses
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage
from sklearn import metrics as sk_metrics

from g2sf_jax import io
from g2sf_jax import metrics

TABLE_LIMITS = (0.3, 0.01)  # algorithms.md §5: the reported AUPRO limits


@dataclasses.dataclass(frozen=True)
class RowResult:
  """The metrics of one scoring row on one class, and what its curves need; a metric the labels do not allow is None.

  image_labels: [N] int, 1 = anomalous; image_scores: [N] float (for the ROC curve).
  aupro: values per limit and the PRO curve (`metrics.aupro`). decisions: `metrics.decision_metrics` at the
  calibrated threshold, and `threshold` that threshold in the row's raw units.
  """
  image_auroc: float | None
  pixel_auroc: float | None
  aupro: metrics.AuproResult | None
  image_labels: np.ndarray
  image_scores: np.ndarray
  decisions: dict | None = None
  threshold: float | None = None

  @classmethod
  def compute(cls, labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
              limits: Sequence[float] = metrics.DEFAULT_LIMITS,
              num_thresholds: int | str = metrics.DEFAULT_NUM_THRESHOLDS,
              pro_maps: np.ndarray | None = None, has_mask: np.ndarray | None = None,
              decisions: np.ndarray | None = None, threshold: float | None = None) -> 'RowResult':
    """All metrics of one row (algorithms.md §5) that the labels allow, from labels [N], image scores [N], masks
    [N,H,W] and maps [N,H,W]; `pro_maps` (default `maps`) for AUPRO where the method's reference normalises them
    differently; `has_mask` [N] False for a defective scan without ground truth (left out of the pixel metrics);
    `decisions` [N] (1 = defect) at the calibrated `threshold`."""
    labels, image_scores = np.asarray(labels), np.asarray(image_scores)
    both = 0 < int((labels != 0).sum()) < labels.size
    with_mask = np.ones(labels.size, bool) if has_mask is None else np.asarray(has_mask, bool)
    pixels = with_mask.any() and bool((labels[with_mask] != 0).any()) and bool(np.asarray(masks)[with_mask].any())
    pro_maps = maps if pro_maps is None else pro_maps
    return cls(image_auroc=metrics.image_auroc(labels, image_scores) if both else None,
               pixel_auroc=metrics.pixel_auroc(masks[with_mask], maps[with_mask]) if pixels else None,
               aupro=(metrics.aupro(masks[with_mask], pro_maps[with_mask], limits, num_thresholds) if pixels
                      else None),
               image_labels=labels, image_scores=image_scores,
               decisions=(None if decisions is None or not labels.size
                          else metrics.decision_metrics(labels, decisions)),
               threshold=threshold)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One test image for the overlays.

  name: e.g. 'test/crack/003' (becomes the file name 'test_crack_003.png').
  rgb: uint8 [H,W,3] (not ImageNet-normalised). anomaly_map: [H,W] float, the map of `ClassResult.map_row`.
  mask: [H,W] ground truth, nonzero = anomalous. label: 1 = anomalous. score: the image score, for the caption.
  predicted: [H,W] bool, the decided defect mask (outlined in cyan), or None. decision: 'good' / 'defect' or ''.
  cloud: [H,W,3] the cleaned organised cloud for the 3-D view, or None.
  """
  name: str
  rgb: np.ndarray
  anomaly_map: np.ndarray
  mask: np.ndarray
  label: int
  score: float | None = None
  predicted: np.ndarray | None = None
  decision: str = ''
  cloud: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ClassResult:
  """Everything the report shows for one class.

  rows: row name -> RowResult; insertion order is the table order (e.g. IMG, PCD, FUS).
  images: the test images, in any order (defects are shown first). A lazy `Sequence` is fine: it is read in
    one pass when `map_range` is given, two passes otherwise.
  map_row: the row whose maps `images` carry (caption only).
  map_range: (min, max) of the colour scale; default: min and max over all maps of the class, the global
    normalisation of algorithms.md §3.3, so colours compare across the class's images.
  problems: (test sample name, what preparation worked around) for the samples scored despite a problem (e.g. an
    empty cloud), listed with the results so no such score passes unnoticed.
  notes: what the labels allow and what was left out (no test set, good parts only, unscorable scans, …).
  """
  name: str
  rows: Mapping[str, RowResult]
  images: Sequence[ImageRecord] = ()
  map_row: str = 'FUS'
  map_range: tuple[float, float] | None = None
  problems: Sequence[tuple[str, str]] = ()
  notes: Sequence[str] = ()


def metric_names(limits: Sequence[float]) -> list[str]:
  """Column names: I-AUROC, P-AUROC, then AUPRO@<limit in %> per limit (e.g. AUPRO@30%)."""
  return ['I-AUROC', 'P-AUROC'] + [_aupro_name(limit) for limit in limits]


DECISION_COLUMNS = ('TP', 'FP', 'TN', 'FN', 'precision', 'recall', 'F1', 'false_reject_rate', 'escape_rate')


def row_values(row: RowResult) -> dict[str, float]:
  """The rounded metric values of one row the labels allow, keyed by `metric_names`."""
  values = {'I-AUROC': row.image_auroc, 'P-AUROC': row.pixel_auroc}
  if row.aupro is not None:
    values.update({_aupro_name(limit): value for limit, value in row.aupro.values.items()})
  return {name: metrics.round4(value) for name, value in values.items() if value is not None}


def decision_values(row: RowResult) -> dict[str, float]:
  """The row's decisions at the calibrated threshold (counts, rounded rates; NaN rates left out)."""
  if row.decisions is None:
    return {}
  out = {k: (v if k in ('TP', 'FP', 'TN', 'FN') else metrics.round4(v)) for k, v in row.decisions.items()
         if not (isinstance(v, float) and np.isnan(v))}
  if row.threshold is not None:
    out['threshold'] = float(row.threshold)
  return out


def results_dict(results: Sequence[ClassResult]) -> dict:
  """The JSON content: rounded values per class and row, and the mean per row over the classes that have it."""
  _check_results(results)
  row_names = _row_names(results)
  per_class = {r.name: {row: row_values(res) for row, res in r.rows.items()} for r in results}
  decided = {r.name: {row: decision_values(res) for row, res in r.rows.items() if res.decisions is not None}
             for r in results}
  means, decision_means = {}, {}
  for row in row_names:
    have = [per_class[r.name][row] for r in results if row in r.rows]
    names = list(dict.fromkeys(name for values in have for name in values))
    means[row] = {name: metrics.round4(metrics.dataset_mean([v.get(name, np.nan) for v in have])) for name in names}
    rates = [decided[r.name][row] for r in results if row in decided[r.name]]
    decision_means[row] = {name: metrics.round4(metrics.dataset_mean([v.get(name, np.nan) for v in rates]))
                           for name in DECISION_COLUMNS[4:] if any(name in v for v in rates)}
  thresholds = list(dict.fromkeys(res.aupro.num_thresholds for r in results for res in r.rows.values()
                                  if res.aupro is not None))
  return {'rows': row_names, 'classes': per_class, 'mean': means,
          'num_classes': {row: sum(row in r.rows for r in results) for row in row_names},
          'aupro_thresholds': thresholds, 'decisions': decided, 'decisions_mean': decision_means,
          'notes': {r.name: list(r.notes) for r in results if r.notes},
          'problems': {r.name: [f'{sample}: {problem}' for sample, problem in r.problems] for r in results
                       if r.problems}}


def results_markdown(table: dict, limits: Sequence[float] = TABLE_LIMITS) -> str:
  """Markdown of `results_dict(...)`: the mean table, then one line per class and row."""
  columns = metric_names(limits)
  counted = f' (AUPRO thresholds: {_join(table["aupro_thresholds"])})' if table['aupro_thresholds'] else ''
  lines = [f'## Mean over classes{counted}', '',
           '| Row | Classes | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
  for row in table['rows']:
    lines.append(f'| {row} | {table["num_classes"][row]} | ' + _cells(table['mean'][row], columns) + ' |')
  lines += ['', '## Per class', '',
            '| Class | Row | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
  for name, rows in table['classes'].items():
    for row, values in rows.items():
      lines.append(f'| {name} | {row} | ' + _cells(values, columns) + ' |')
  if any(table.get('decisions', {}).values()):
    cols = ('threshold',) + DECISION_COLUMNS
    lines += ['', '## Decisions at the calibrated threshold (test set)', '',
              '| Class | Row | ' + ' | '.join(cols) + ' |', '|---|---|' + '---|' * len(cols)]
    for name, rows in table['decisions'].items():
      for row, values in rows.items():
        lines.append(f'| {name} | {row} | ' + ' | '.join(_number(values.get(c)) for c in cols) + ' |')
    lines += ['', '| Mean | Row | ' + ' | '.join(DECISION_COLUMNS[4:]) + ' |', '|---|---|' + '---|' * 5]
    for row, values in table['decisions_mean'].items():
      lines.append(f'| mean | {row} | ' + ' | '.join(_number(values.get(c)) for c in DECISION_COLUMNS[4:]) + ' |')
  if table.get('notes'):
    lines += ['', '## What the labels allow', '']
    lines += [f'- {name}: {note}' for name, notes in table['notes'].items() for note in notes]
  if table.get('problems'):
    lines += ['', '## Test samples scored despite a preparation problem', '']
    lines += [f'- {name} {problem}' for name, problems in table['problems'].items() for problem in problems]
  return '\n'.join(lines) + '\n'


def _contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
  mask = np.asarray(mask) != 0
  return ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask), iterations=width)


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, map_range: tuple[float, float],
            alpha: float = 0.5, cmap: str = 'jet', predicted: np.ndarray | None = None,
            width: int = 1) -> np.ndarray:
  """uint8 [H,W,3]: the map through a colour map, alpha-blended over the RGB, with the ground-truth contour in white
  and, when given, the predicted mask's contour in cyan (`width` pixels wide).

  A lookup table from the matplotlib colour map instead of a figure per image: a few ms per image.
  """
  lo, hi = map_range
  scaled = (np.asarray(anomaly_map, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
  index = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
  lut = np.round(matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255)
  blended = (1.0 - alpha) * rgb + alpha * lut[index]
  blended[_contour(mask, width)] = 255
  if predicted is not None:
    blended[_contour(predicted, width)] = (0, 255, 255)
  return np.round(blended).astype(np.uint8)


def render_cloud(xyz: np.ndarray, scores: np.ndarray, size: int = 448, azimuth: float = -35.0,
                 elevation: float = 35.0) -> np.ndarray:
  """A 3-D view of an organised cloud's valid points, coloured by `scores` [H,W] in [0, 1] ('inferno', dark good,
  bright defect) and shaded by depth: uint8 [size, size, 3]. An orthographic view from above at `azimuth` /
  `elevation` degrees, each point a square splat sized to the point density (2 to 8 pixels), the nearest point
  winning each pixel (deterministic, NumPy only)."""
  from g2sf_jax import ply
  from g2sf_jax.data import transforms
  valid = transforms.valid_mask(xyz)
  image = np.full((size, size, 3), 255, np.uint8)
  if not valid.any():
    return image
  points = xyz[valid].astype(np.float64)
  points = points - points.mean(0)
  a, e = np.radians(azimuth), np.radians(elevation)
  turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  tilt = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
  view = points @ turn.T @ tilt.T  # x right, y down the image, z away from the viewer (the scanner looks along +z)
  splat = int(np.clip(round(1.5 * size / np.sqrt(len(points))), 2, 8))
  extent = max(np.ptp(view[:, 0]), np.ptp(view[:, 1]), 1e-12)
  col = np.round((view[:, 0] - view[:, 0].min()) / extent * (size - splat - 1)).astype(int)
  row = np.round((view[:, 1] - view[:, 1].min()) / extent * (size - splat - 1)).astype(int)
  depth = view[:, 2]
  shade = 1.0 - 0.5 * (depth - depth.min()) / max(np.ptp(depth), 1e-12)
  colour = np.round(ply.colours(np.asarray(scores)[valid]) * shade[:, None]).astype(np.uint8)
  offsets = [(dr, dc) for dr in range(splat) for dc in range(splat)]
  pixel = np.concatenate([(row + dr) * size + col + dc for dr, dc in offsets])
  order = np.lexsort((np.tile(depth, len(offsets)), pixel))  # per pixel, nearest first
  pixel, first = np.unique(pixel[order], return_index=True)
  image.reshape(-1, 3)[pixel] = np.tile(colour, (len(offsets), 1))[order][first]
  return image


def write_report(out_dir: str | Path, results: Sequence[ClassResult], title: str = 'g2sf-jax results',
                 table_limits: Sequence[float] = TABLE_LIMITS, echo: bool = True) -> Path:
  """Writes every file listed in the module docstring; returns the path of report.html."""
  out_dir = Path(out_dir)
  table = results_dict(results)
  markdown = f'# {title}\n\n' + results_markdown(table, table_limits)
  if echo:
    print(markdown)
  is_report = lambda folder: (folder / 'results.json').is_file() or not any(folder.iterdir())
  with io.atomic_dir(out_dir, is_report) as tmp:
    _write_text(tmp / 'results.md', markdown)
    _write_text(tmp / 'results.json', json.dumps(table, indent=1) + '\n')
    sections = []
    for result in results:
      class_dir = _safe(result.name)
      thumbs = _write_overlays(tmp, class_dir, result)
      if any(row.image_auroc is not None for row in result.rows.values()):
        _save_figure(_roc_figure(result), tmp / class_dir / 'roc.png')
      if any(row.aupro is not None for row in result.rows.values()):
        _save_figure(_pro_figure(result), tmp / class_dir / 'pro.png')
      sections.append(_class_section(result, table, class_dir, thumbs, table_limits, tmp))
    page = _page(title, table, sections, [r.name for r in results], table_limits)
    _write_text(tmp / 'report.html', page)
  return out_dir / 'report.html'


def _aupro_name(limit: float) -> str:
  return f'AUPRO@{100 * limit:g}%'


def _join(items: Sequence) -> str:
  return ', '.join(str(item) for item in items)


def _cells(values: Mapping[str, float], columns: Sequence[str]) -> str:
  return ' | '.join(f'{values[c]:.4f}' if c in values else '—' for c in columns)


def _number(value) -> str:
  if value is None:
    return '—'
  return str(value) if isinstance(value, int) else f'{value:.4g}'


def _row_names(results: Sequence[ClassResult]) -> list[str]:
  return list(dict.fromkeys(row for r in results for row in r.rows))


def _check_results(results: Sequence[ClassResult]) -> None:
  names = [r.name for r in results]
  if not names:
    raise ValueError('report: no class results given')
  if len(set(names)) != len(names) or len({_safe(n) for n in names}) != len(names):
    raise ValueError(f'report: class names must be unique (also as folder names), got {names}')
  for r in results:
    if not r.rows:
      raise ValueError(f'report: class {r.name!r} has no rows')


def _safe(name: str) -> str:
  """A file-name-safe version of a class or image name ('test/crack/003' -> 'test_crack_003')."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or '_'


def _write_text(path: Path, text: str) -> None:
  with io.atomic_write(path, 'w') as f:
    f.write(text)


def _save_figure(fig: Figure, path: Path) -> None:
  """Agg canvas on a standalone Figure: no pyplot, no global backend state."""
  FigureCanvasAgg(fig)
  with io.atomic_write(path) as f:
    fig.savefig(f, format='png')


def _roc_figure(result: ClassResult) -> Figure:
  fig = Figure(figsize=(4.2, 3.6), dpi=100, layout='constrained')
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color='0.7', linestyle='--', linewidth=0.8)
  for name, row in result.rows.items():
    if row.image_auroc is None:
      continue
    fpr, tpr, _ = sk_metrics.roc_curve(np.asarray(row.image_labels) != 0, row.image_scores)
    ax.plot(fpr, tpr, label=f'{name} ({row.image_auroc:.4f})')
  ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='FPR', ylabel='TPR', title=f'{result.name}: image ROC')
  ax.legend(loc='lower right', fontsize=8)
  return fig


def _pro_figure(result: ClassResult) -> Figure:
  rows = {name: row for name, row in result.rows.items() if row.aupro is not None}
  limits = sorted({limit for row in rows.values() for limit in row.aupro.values})
  x_max = limits[-1]
  fig = Figure(figsize=(4.2, 3.6), dpi=100, layout='constrained')
  ax = fig.add_subplot()
  for limit in limits:
    ax.axvline(limit, color='0.8', linewidth=0.8, linestyle=':')
  for name, row in rows.items():
    fpr, pro = _visible_curve(row.aupro.fpr, row.aupro.pro, x_max)
    ax.plot(fpr, pro, marker='.' if fpr.size <= 200 else None, markersize=2,
            label=f'{name} ({_aupro_name(x_max)} {row.aupro.values.get(x_max, np.nan):.4f})')
  thresholds = dict.fromkeys(row.aupro.num_thresholds for row in rows.values())
  ax.set(xlim=(0, x_max), ylim=(0, 1.02), xlabel='FPR', ylabel='PRO',
         title=f'{result.name}: PRO ({_join(thresholds)} thresholds)')
  ax.legend(loc='lower right', fontsize=8)
  return fig


def _visible_curve(fpr: np.ndarray, pro: np.ndarray, x_max: float, max_points: int = 4000
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The part of a curve up to x_max (and one point beyond), thinned to max_points for plotting."""
  end = min(int(np.searchsorted(fpr, x_max, side='right')) + 1, fpr.size)
  keep = np.unique(np.linspace(0, end - 1, min(end, max_points)).astype(int))
  return fpr[keep], pro[keep]


def _map_range(images: Sequence[ImageRecord]) -> tuple[float, float]:
  lo, hi = np.inf, -np.inf
  for image in images:
    lo, hi = min(lo, float(np.min(image.anomaly_map))), max(hi, float(np.max(image.anomaly_map)))
  return lo, hi


class _Thumb(NamedTuple):
  path: str  # relative to the report folder
  name: str
  label: int
  score: float | None
  decision: str = ''
  view: str = ''  # the 3-D view, relative to the report folder, or ''


MIN_SIDE = 448  # overlays and 3-D views are drawn at the scan's resolution, at least this many pixels across


def _write_overlays(out_dir: Path, class_dir: str, result: ClassResult) -> list[_Thumb]:
  """Writes one overlay per image; returns the thumbnails, defects first."""
  if not len(result.images):
    return []
  map_range = result.map_range or _map_range(result.images)
  written = []
  for image in result.images:
    rgb, amap, mask = np.asarray(image.rgb), np.asarray(image.anomaly_map), np.asarray(image.mask)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or amap.shape != rgb.shape[:2] \
        or mask.shape != rgb.shape[:2]:
      raise ValueError(f'report: image {image.name!r} of class {result.name!r}: expected rgb uint8 [H,W,3], '
                       f'anomaly_map [H,W], mask [H,W]; got rgb {rgb.dtype} {rgb.shape}, map {amap.shape}, '
                       f'mask {mask.shape}')
    factor = max(1, -(-MIN_SIDE // max(rgb.shape[:2])))  # a small scan is enlarged to be readable
    grow = lambda x: np.repeat(np.repeat(x, factor, 0), factor, 1) if factor > 1 else x
    predicted = None if image.predicted is None else grow(np.asarray(image.predicted))
    rel = f'{class_dir}/overlays/{_safe(image.name)}.png'
    io.write_png(out_dir / rel, overlay(grow(rgb), grow(amap), grow(mask), map_range, predicted=predicted,
                                        width=max(1, factor)))
    view = ''
    if image.cloud is not None:
      view = f'{class_dir}/views/{_safe(image.name)}.png'
      scores = (amap - map_range[0]) / (map_range[1] - map_range[0] if map_range[1] > map_range[0] else 1.0)
      io.write_png(out_dir / view, render_cloud(image.cloud, scores, size=max(MIN_SIDE, max(rgb.shape[:2]))))
    written.append(_Thumb(rel, image.name, int(image.label), image.score, image.decision, view))
  written.sort(key=lambda thumb: (thumb.label == 0, thumb.name))
  return written


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.curves img { width: 420px; margin-right: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.grid figure { margin: 0; width: 304px; font-size: 11px; }
.grid img { width: 150px; height: auto; }
.defect figcaption { color: #b00; }
.wrong { outline: 2px solid #e80; }
"""


def _html_table(rows: Sequence[tuple[str, Mapping[str, float]]], columns: Sequence[str]) -> str:
  head = '<tr><th>Row</th>' + ''.join(f'<th>{html.escape(c)}</th>' for c in columns) + '</tr>'
  body = ''.join('<tr><td>' + html.escape(name) + '</td>'
                 + ''.join(f'<td>{values[c]:.4f}</td>' if c in values else '<td>—</td>' for c in columns)
                 + '</tr>' for name, values in rows)
  return f'<table>{head}{body}</table>'


def _class_section(result: ClassResult, table: dict, class_dir: str, thumbs: list[_Thumb],
                   limits: Sequence[float], out_dir: Path) -> str:
  name = html.escape(result.name)
  parts = [f'<h2 id="{html.escape(class_dir)}">{name}</h2>',
           _html_table(list(table['classes'][result.name].items()), metric_names(limits))]
  decided = table.get('decisions', {}).get(result.name, {})
  if decided:
    cols = ('threshold',) + DECISION_COLUMNS
    head = '<tr><th>Row</th>' + ''.join(f'<th>{html.escape(c)}</th>' for c in cols) + '</tr>'
    body = ''.join(f'<tr><td>{html.escape(row)}</td>' + ''.join(f'<td>{_number(v.get(c))}</td>' for c in cols)
                   + '</tr>' for row, v in decided.items())
    parts.append(f'<p>Decisions at the calibrated threshold (raw units):</p><table>{head}{body}</table>')
  for note in result.notes:
    parts.append(f'<p class="note">{html.escape(note)}</p>')
  curves = [f'<a href="{class_dir}/{f}"><img src="{class_dir}/{f}" alt="{f} {name}"></a>'
            for f in ('roc.png', 'pro.png') if (out_dir / class_dir / f).is_file()]
  if curves:
    parts.append('<div class="curves">' + ''.join(curves) + '</div>')
  if result.problems:
    parts.append('<p class="problems">Test samples scored despite a preparation problem:</p><ul>' +
                 ''.join(f'<li>{html.escape(sample)}: {html.escape(problem)}</li>' for sample, problem in
                         result.problems) + '</ul>')
  if thumbs:
    num_defects = sum(thumb.label != 0 for thumb in thumbs)
    parts.append(f'<p>{html.escape(result.map_row)} anomaly maps, normalised (0.5 = the calibrated threshold), '
                 f'{num_defects} anomalous then {len(thumbs) - num_defects} good scans; white = ground truth, cyan = '
                 'the predicted defect mask; orange frame = a wrong decision. Right: the cleaned point cloud in 3-D, '
                 'coloured by the same scores.</p><div class="grid">')
    for thumb in thumbs:
      score = '' if thumb.score is None else f' · {thumb.score:.3f}'
      decision = f' → {thumb.decision}' if thumb.decision else ''
      wrong = thumb.decision and (thumb.decision == 'defect') != bool(thumb.label)
      view = (f'<a href="{thumb.view}"><img src="{thumb.view}" loading="lazy" alt="3-D view"></a>'
              if thumb.view else '')
      parts.append(f'<figure class="{"defect" if thumb.label else "good"}{" wrong" if wrong else ""}">'
                   f'<a href="{thumb.path}"><img src="{thumb.path}" loading="lazy" alt="{html.escape(thumb.name)}">'
                   f'</a>{view}<figcaption>{html.escape(thumb.name)}{score}{decision}</figcaption></figure>')
    parts.append('</div>')
  return '\n'.join(parts)


def _page(title: str, table: dict, sections: list[str], class_names: list[str], limits: Sequence[float]) -> str:
  index = ' · '.join(f'<a href="#{html.escape(_safe(n))}">{html.escape(n)}</a>' for n in class_names)
  mean = _html_table([(row, table['mean'][row]) for row in table['rows']], metric_names(limits))
  return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f'<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n'
          f'<p>Tables: <a href="results.md">results.md</a> · <a href="results.json">results.json</a> '
          f'(all AUPRO limits). AUPRO thresholds: {html.escape(_join(table["aupro_thresholds"]))}.</p>\n'
          f'<h2>Mean over classes</h2>\n{mean}\n<p>Classes: {index}</p>\n' + '\n'.join(sections)
          + '\n</body></html>\n')
