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
  out_dir/<class>/overlays/<image name>.png   the anomaly map over the RGB with the ground-truth contour

Values are rounded to 4 decimals per class and the mean is the unweighted mean of the rounded per-class values
over the classes that have the row (algorithms.md §5).
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
  """The metrics of one scoring row on one class, and what its curves need.

  image_labels: [N] int, 1 = anomalous; image_scores: [N] float (for the ROC curve).
  aupro: values per limit and the PRO curve (`metrics.aupro`).
  """
  image_auroc: float
  pixel_auroc: float
  aupro: metrics.AuproResult
  image_labels: np.ndarray
  image_scores: np.ndarray

  @classmethod
  def compute(cls, labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
              limits: Sequence[float] = metrics.DEFAULT_LIMITS,
              num_thresholds: int | str = metrics.DEFAULT_NUM_THRESHOLDS,
              pro_maps: np.ndarray | None = None) -> 'RowResult':
    """All metrics of one row (algorithms.md §5) from labels [N], image scores [N], masks [N,H,W] and maps [N,H,W];
    `pro_maps` (default `maps`) for AUPRO where the method's reference normalises them differently."""
    labels, image_scores = np.asarray(labels), np.asarray(image_scores)
    return cls(image_auroc=metrics.image_auroc(labels, image_scores),
               pixel_auroc=metrics.pixel_auroc(masks, maps),
               aupro=metrics.aupro(masks, maps if pro_maps is None else pro_maps, limits, num_thresholds),
               image_labels=labels, image_scores=image_scores)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One test image for the overlays.

  name: e.g. 'test/crack/003' (becomes the file name 'test_crack_003.png').
  rgb: uint8 [H,W,3] (not ImageNet-normalised). anomaly_map: [H,W] float, the map of `ClassResult.map_row`.
  mask: [H,W] ground truth, nonzero = anomalous. label: 1 = anomalous. score: the image score, for the caption.
  """
  name: str
  rgb: np.ndarray
  anomaly_map: np.ndarray
  mask: np.ndarray
  label: int
  score: float | None = None


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
  """
  name: str
  rows: Mapping[str, RowResult]
  images: Sequence[ImageRecord] = ()
  map_row: str = 'FUS'
  map_range: tuple[float, float] | None = None
  problems: Sequence[tuple[str, str]] = ()


def metric_names(limits: Sequence[float]) -> list[str]:
  """Column names: I-AUROC, P-AUROC, then AUPRO@<limit in %> per limit (e.g. AUPRO@30%)."""
  return ['I-AUROC', 'P-AUROC'] + [_aupro_name(limit) for limit in limits]


def row_values(row: RowResult) -> dict[str, float]:
  """The rounded metric values of one row, keyed by `metric_names`."""
  values = {'I-AUROC': row.image_auroc, 'P-AUROC': row.pixel_auroc}
  values.update({_aupro_name(limit): value for limit, value in row.aupro.values.items()})
  return {name: metrics.round4(value) for name, value in values.items()}


def results_dict(results: Sequence[ClassResult]) -> dict:
  """The JSON content: rounded values per class and row, and the mean per row over the classes that have it."""
  _check_results(results)
  row_names = _row_names(results)
  per_class = {r.name: {row: row_values(res) for row, res in r.rows.items()} for r in results}
  means = {}
  for row in row_names:
    have = [per_class[r.name][row] for r in results if row in r.rows]
    names = list(dict.fromkeys(name for values in have for name in values))
    means[row] = {name: metrics.round4(metrics.dataset_mean([v.get(name, np.nan) for v in have])) for name in names}
  thresholds = list(dict.fromkeys(res.aupro.num_thresholds for r in results for res in r.rows.values()))
  return {'rows': row_names, 'classes': per_class, 'mean': means,
          'num_classes': {row: sum(row in r.rows for r in results) for row in row_names},
          'aupro_thresholds': thresholds,
          'problems': {r.name: [f'{sample}: {problem}' for sample, problem in r.problems] for r in results
                       if r.problems}}


def results_markdown(table: dict, limits: Sequence[float] = TABLE_LIMITS) -> str:
  """Markdown of `results_dict(...)`: the mean table, then one line per class and row."""
  columns = metric_names(limits)
  lines = [f'## Mean over classes (AUPRO thresholds: {_join(table["aupro_thresholds"])})', '',
           '| Row | Classes | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
  for row in table['rows']:
    lines.append(f'| {row} | {table["num_classes"][row]} | ' + _cells(table['mean'][row], columns) + ' |')
  lines += ['', '## Per class', '',
            '| Class | Row | ' + ' | '.join(columns) + ' |', '|---|---|' + '---|' * len(columns)]
  for name, rows in table['classes'].items():
    for row, values in rows.items():
      lines.append(f'| {name} | {row} | ' + _cells(values, columns) + ' |')
  if table.get('problems'):
    lines += ['', '## Test samples scored despite a preparation problem', '']
    lines += [f'- {name} {problem}' for name, problems in table['problems'].items() for problem in problems]
  return '\n'.join(lines) + '\n'


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, map_range: tuple[float, float],
            alpha: float = 0.5, cmap: str = 'jet') -> np.ndarray:
  """uint8 [H,W,3]: the map through a colour map, alpha-blended over the RGB, with the mask contour in white.

  A lookup table from the matplotlib colour map instead of a figure per image: a few ms per image.
  """
  lo, hi = map_range
  scaled = (np.asarray(anomaly_map, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
  index = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
  lut = np.round(matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255)
  blended = (1.0 - alpha) * rgb + alpha * lut[index]
  mask = np.asarray(mask) != 0
  contour = ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask))
  blended[contour] = 255
  return np.round(blended).astype(np.uint8)


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
      _save_figure(_roc_figure(result), tmp / class_dir / 'roc.png')
      _save_figure(_pro_figure(result), tmp / class_dir / 'pro.png')
      sections.append(_class_section(result, table, class_dir, thumbs, table_limits))
    page = _page(title, table, sections, [r.name for r in results], table_limits)
    _write_text(tmp / 'report.html', page)
  return out_dir / 'report.html'


def _aupro_name(limit: float) -> str:
  return f'AUPRO@{100 * limit:g}%'


def _join(items: Sequence) -> str:
  return ', '.join(str(item) for item in items)


def _cells(values: Mapping[str, float], columns: Sequence[str]) -> str:
  return ' | '.join(f'{values[c]:.4f}' if c in values else '—' for c in columns)


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
    fpr, tpr, _ = sk_metrics.roc_curve(np.asarray(row.image_labels) != 0, row.image_scores)
    ax.plot(fpr, tpr, label=f'{name} ({row.image_auroc:.4f})')
  ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='FPR', ylabel='TPR', title=f'{result.name}: image ROC')
  ax.legend(loc='lower right', fontsize=8)
  return fig


def _pro_figure(result: ClassResult) -> Figure:
  limits = sorted({limit for row in result.rows.values() for limit in row.aupro.values})
  x_max = limits[-1]
  fig = Figure(figsize=(4.2, 3.6), dpi=100, layout='constrained')
  ax = fig.add_subplot()
  for limit in limits:
    ax.axvline(limit, color='0.8', linewidth=0.8, linestyle=':')
  for name, row in result.rows.items():
    fpr, pro = _visible_curve(row.aupro.fpr, row.aupro.pro, x_max)
    ax.plot(fpr, pro, marker='.' if fpr.size <= 200 else None, markersize=2,
            label=f'{name} ({_aupro_name(x_max)} {row.aupro.values.get(x_max, np.nan):.4f})')
  thresholds = dict.fromkeys(row.aupro.num_thresholds for row in result.rows.values())
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
    rel = f'{class_dir}/overlays/{_safe(image.name)}.png'
    io.write_png(out_dir / rel, overlay(rgb, amap, mask, map_range))
    written.append(_Thumb(rel, image.name, int(image.label), image.score))
  written.sort(key=lambda thumb: (thumb.label == 0, thumb.name))
  return written


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.curves img { width: 420px; margin-right: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.grid figure { margin: 0; width: 150px; font-size: 11px; }
.grid img { width: 150px; height: auto; }
.defect figcaption { color: #b00; }
"""


def _html_table(rows: Sequence[tuple[str, Mapping[str, float]]], columns: Sequence[str]) -> str:
  head = '<tr><th>Row</th>' + ''.join(f'<th>{html.escape(c)}</th>' for c in columns) + '</tr>'
  body = ''.join('<tr><td>' + html.escape(name) + '</td>'
                 + ''.join(f'<td>{values[c]:.4f}</td>' if c in values else '<td>—</td>' for c in columns)
                 + '</tr>' for name, values in rows)
  return f'<table>{head}{body}</table>'


def _class_section(result: ClassResult, table: dict, class_dir: str, thumbs: list[_Thumb],
                   limits: Sequence[float]) -> str:
  name = html.escape(result.name)
  parts = [f'<h2 id="{html.escape(class_dir)}">{name}</h2>',
           _html_table(list(table['classes'][result.name].items()), metric_names(limits)),
           f'<div class="curves"><a href="{class_dir}/roc.png"><img src="{class_dir}/roc.png" alt="ROC {name}"></a>'
           f'<a href="{class_dir}/pro.png"><img src="{class_dir}/pro.png" alt="PRO {name}"></a></div>']
  if result.problems:
    parts.append('<p class="problems">Test samples scored despite a preparation problem:</p><ul>' +
                 ''.join(f'<li>{html.escape(sample)}: {html.escape(problem)}</li>' for sample, problem in
                         result.problems) + '</ul>')
  if thumbs:
    num_defects = sum(thumb.label != 0 for thumb in thumbs)
    parts.append(f'<p>{html.escape(result.map_row)} anomaly maps, {num_defects} anomalous then '
                 f'{len(thumbs) - num_defects} good images; white = ground-truth contour.</p><div class="grid">')
    for thumb in thumbs:
      score = '' if thumb.score is None else f' · {thumb.score:.4g}'
      parts.append(f'<figure class="{"defect" if thumb.label else "good"}"><a href="{thumb.path}">'
                   f'<img src="{thumb.path}" loading="lazy" alt="{html.escape(thumb.name)}"></a>'
                   f'<figcaption>{html.escape(thumb.name)}{score}</figcaption></figure>')
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
