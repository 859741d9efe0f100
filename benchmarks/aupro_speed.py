"""Times `metrics.aupro` against a plain per-threshold loop on one MVTec-size class (algorithms.md §5).

Run from the repository root: `python -m benchmarks.aupro_speed [--repeats 3]`.
The synthetic class has 150 images of 224x224 with a few hundred random blob components; both versions must give
the same numbers (asserted) before their times are compared. The loop is the straightforward implementation:
for every threshold, for every component, the fraction of its pixels scored above the threshold.
"""
import argparse
import statistics
import time

import numpy as np
from scipy import ndimage

from g2sf_jax import metrics


def make_class(seed: int, num_images: int = 150, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
  """masks [N,S,S] bool with 0-4 blobs per image (a third of the images defect-free), maps [N,S,S] float32."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  masks = np.zeros((num_images, size, size), dtype=bool)
  for i in range(num_images):
    if i % 3 == 0:
      continue
    for _ in range(rng.integers(1, 5)):
      cy, cx = rng.uniform(0, size, 2)
      ry, rx = rng.uniform(2, 25, 2)
      masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 4, 4))
  maps = noise + 0.05 * ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 3, 3))
  return masks, maps.astype(np.float32)


def loop_aupro(masks: np.ndarray, maps: np.ndarray, limits, num_thresholds: int) -> dict[float, float]:
  """Threshold by threshold over all components (the straightforward version)."""
  components, ok_scores = [], []
  for mask, score in zip(masks, maps):
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    ok_scores.append(score[labelled == 0].astype(np.float64))
    components.extend(score[labelled == k].astype(np.float64) for k in range(1, n + 1))
  ok_sorted = np.sort(np.concatenate(ok_scores))
  positions = np.linspace(0, ok_sorted.size - 1, num_thresholds).astype(int)
  fprs, pros = [1.0], [1.0]
  for pos in positions:
    t = ok_sorted[pos]
    fprs.append(1.0 - (pos + 1) / ok_sorted.size)
    pros.append(sum(np.count_nonzero(c > t) / c.size for c in components) / len(components))
  fpr, pro = np.array(fprs[::-1]), np.array(pros[::-1])
  values = {}
  for limit in limits:
    end = int(np.searchsorted(fpr, limit, side='right'))
    area = np.trapezoid(pro[:end], fpr[:end])
    if fpr[end - 1] != limit:
      at = np.interp(limit, fpr[end - 1:end + 1], pro[end - 1:end + 1])
      area += 0.5 * (at + pro[end - 1]) * (limit - fpr[end - 1])
    values[limit] = area / limit
  return values


def median_time(fn, repeats: int) -> tuple[float, object]:
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--thresholds', type=int, nargs='+', default=[100, 1000])
  args = parser.parse_args()
  masks, maps = make_class(args.seed)
  limits = metrics.DEFAULT_LIMITS
  t_exact, exact = median_time(lambda: metrics.aupro(masks, maps, limits, 'exact'), args.repeats)
  print(f'class: {masks.shape[0]} images of {masks.shape[1]}x{masks.shape[2]}, {exact.num_components} components, '
        f'{int(masks.sum())} anomalous pixels; median of {args.repeats} runs')
  for num in args.thresholds:
    t_vec, vec = median_time(lambda: metrics.aupro(masks, maps, limits, num), args.repeats)
    t_loop, loop = median_time(lambda: loop_aupro(masks, maps, limits, num), args.repeats)
    for limit in limits:
      assert abs(vec[limit] - loop[limit]) < 1e-9, (num, limit, vec[limit], loop[limit])
    print(f'{num} thresholds: vectorised {t_vec:.3f} s, plain loop {t_loop:.3f} s, ratio {t_loop / t_vec:.1f}x; '
          + ', '.join(f'AUPRO@{lim:g}={vec[lim]:.4f}' for lim in limits))
  num_distinct = np.unique(maps[~masks]).size
  print(f'exact ({num_distinct} thresholds, {exact.fpr.size} curve points kept): vectorised {t_exact:.3f} s; '
        + ', '.join(f'AUPRO@{lim:g}={exact[lim]:.4f}' for lim in limits))
  t_pix, pix = median_time(lambda: metrics.pixel_auroc(masks, maps), args.repeats)
  print(f'pixel AUROC {pix:.4f}: {t_pix:.3f} s')


if __name__ == '__main__':
  main()
