"""The timed stages of `benchmarks.speed`: each runs ours (JAX) and a PyTorch CPU version of what the reference
computes on the same inputs, and returns `Row`s (stage times) or `Limit`s (machine measurements).

The PyTorch versions are in `references/` (`torch_pipeline`, `torch_point_mae`, `torch_g2sf`); the full and the
quick (`--quick`, smoke-test) workload sizes are `FULL` and `QUICK`.
"""
import dataclasses
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import aupro_speed
from benchmarks import bank_memory
from benchmarks import timing
from experiments.configs.common import get_base_config
from g2sf_jax import backbones
from g2sf_jax import distributed
from g2sf_jax import features
from g2sf_jax import memory_bank as mb
from g2sf_jax import metrics
from g2sf_jax.data import dbscan
from g2sf_jax.data import plane
from g2sf_jax.data import preprocessing
from g2sf_jax.data import synthetic
from g2sf_jax.data import transforms
from g2sf_jax.methods.g2sf import train as fusion_train
from g2sf_jax.models import point_mae
from g2sf_jax.models import vit
from g2sf_jax.ops import buckets
from g2sf_jax.ops import fps
from g2sf_jax.ops import knn
from references import torch_pipeline
from references import torch_point_mae

REPO = Path(__file__).resolve().parents[1]
PIPELINE_BATCH = 8  # config.batch_size: clouds per feature-extraction call
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Sizes:
  cloud_side: int                          # organised grid side; valid pixels form a centred disk
  cloud_radius: float                      # disk radius in pixels (89 → ≈25k valid points of 224²)
  groups: tuple[tuple[int, int], ...]      # (G, K) FPS + kNN settings
  vit: dict                                # VisionTransformer fields (default: ViT-B/8 at 224)
  point_mae: dict                          # PointMAE fields (default: G²SF's encoder)
  point_mae_group: tuple[int, int]
  coreset_rows: int
  coreset_iters_jax: int                   # greedy iterations timed, then extrapolated to k−1
  coreset_iters_torch: int
  knn_queries: int
  knn_banks: tuple[tuple[str, int, int], ...]  # (what, rows, dims) of each searched bank
  knn_k: int
  aupro_images: int
  aupro_size: int
  lspn_batch: int
  lspn_dims: tuple[int, int]               # (D_R, D_P)
  lspn_coreset_rows: tuple[int, int]       # (K_R, K_P)
  lspn_hidden: int
  lspn_emb: int
  matmul_n: int
  bank_args: tuple[str, ...]               # benchmarks/bank_memory.py flags
  clean_size: int                          # scan side for the §1.2 cleaning (synthetic, fov 0.16, as MVTec)
  clean_ref_repeats: int                   # Open3D calls timed after its warm-up (~50 s each at 800²)


FULL = Sizes(
    cloud_side=224, cloud_radius=89.0, groups=((512, 128), (1024, 128)), vit={}, point_mae={},
    point_mae_group=(512, 128), coreset_rows=200_704, coreset_iters_jax=100, coreset_iters_torch=20,
    knn_queries=3136, knn_banks=(('RGB coreset', 19_129, 768), ('PCD coreset', 76_518, 1152),
                                 ('FPFH coreset', 76_518, 33), ('whole RGB bank', 191_296, 768)), knn_k=20,
    aupro_images=150, aupro_size=224, lspn_batch=8192,
    lspn_dims=(768, 1152), lspn_coreset_rows=(19_129, 76_518), lspn_hidden=512, lspn_emb=128, matmul_n=4096,
    bank_args=('--iterations', '50'), clean_size=800, clean_ref_repeats=1)
QUICK = Sizes(
    cloud_side=40, cloud_radius=14.0, groups=((32, 16), (64, 16)),
    vit=dict(img_size=32, dim=64, depth=2, num_heads=2), point_mae=dict(dim=64, depth=2, num_heads=2,
                                                                         out_blocks=(0, 1)),
    point_mae_group=(32, 16), coreset_rows=4096, coreset_iters_jax=5, coreset_iters_torch=5, knn_queries=64,
    knn_banks=(('small', 1000, 32), ('wide', 200, 96)), knn_k=20, aupro_images=6, aupro_size=64, lspn_batch=64,
    lspn_dims=(8, 12),
    lspn_coreset_rows=(64, 64), lspn_hidden=32, lspn_emb=8, matmul_n=256,
    bank_args=('--rows', '4000', '--dim', '64', '--iterations', '3'), clean_size=160, clean_ref_repeats=1)


@dataclasses.dataclass
class Row:
  """One stage: median seconds of ours and of the reference (ratio = ref / ours)."""
  stage: str
  what: str
  ours_s: float
  ref_s: float
  compile_s: float          # first call − median for jitted code; NaN where nothing compiles
  reference: str
  gflop: float = math.nan   # analytic FLOPs of one call (matmul-bound stages only)
  note: str = ''
  load: tuple[float, float] = (math.nan, math.nan)  # 1-minute load average before and after the stage

  @property
  def ratio(self) -> float:
    return self.ref_s / self.ours_s


@dataclasses.dataclass
class Limit:
  """A machine measurement: one value per framework (or one value for both)."""
  stage: str
  what: str
  jax_value: float
  torch_value: float
  unit: str
  note: str = ''
  load: tuple[float, float] = (math.nan, math.nan)


def _fastest(fn: Callable[[], Any], calls: int) -> float:
  """Shortest of `calls` timed calls after one warm-up: the machine's attainable rate, not a typical one."""
  fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _jax_call(fn: Callable[..., Any], *args) -> Callable[[], Any]:
  return lambda: jax.block_until_ready(fn(*args))


def random_params(init: Callable[..., Any], *args, seed: int = 0) -> Any:
  """Random weights with the structure of `init(key, *args)`, drawn in NumPy (jitting a Flax init compiles the
  threefry RNG, seconds on CPU). Matrices ~ N(0, 1/fan_in), 1-D `scale` leaves 1, other vectors 0."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if len(leaf.shape) >= 2:
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(math.sqrt(fan_in)))
    return jnp.full(leaf.shape, 1.0 if 'scale' in jax.tree_util.keystr(path) else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init, jax.random.key(0), *args))


def _no_grad(fn: Callable[..., Any], *args) -> Callable[[], Any]:
  def call():
    with torch.no_grad():
      return fn(*args)
  return call


# ---------------------------------------------------------------------------------------------------------------
# FLOP counts (multiply-adds ×2; elementwise work ignored)


def transformer_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
  """qkv + proj + MLP (2·T·D²·(3 + 1 + 2·ratio)) and the two attention products (4·T²·D), per block."""
  return depth * (2 * tokens * dim * dim * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * dim)


def vit_flops(img_size: int = 224, patch_size: int = 8, dim: int = 768, depth: int = 12, **unused) -> float:
  patches = (img_size // patch_size) ** 2
  return 2 * patches * patch_size ** 2 * 3 * dim + transformer_flops(patches + 1, dim, depth)


def point_mae_flops(groups: int, group_size: int, dim: int = 384, depth: int = 12, **unused) -> float:
  """Mini-PointNet per point (3→128→256, 512→512→dim), positional MLP, then the transformer over G tokens."""
  per_point = 2 * (3 * 128 + 128 * 256 + 512 * 512 + 512 * dim)
  return groups * group_size * per_point + 2 * groups * (3 * 128 + 128 * dim) + transformer_flops(groups, dim, depth)


def lspn_step_flops(batch: int, dim: int, hidden: int, emb: int, calls: int = 12) -> float:
  """Forward matmuls of `calls` LSPN evaluations, ×3 for forward + backward (input and weight gradients)."""
  per_row = 2 * (2 * (dim * hidden + hidden * emb) + 2 * emb * 2 * emb + 2 * emb * 2)
  return 3 * calls * batch * per_row


# ---------------------------------------------------------------------------------------------------------------
# Stages


def organised_scan(side: int, radius: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A side² organised scan [side, side, 3] of a bumpy sheet seen through a centred disk, and the disk [side, side]
  (zeros outside it)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:side, :side].astype(np.float32)
  inside = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= radius ** 2
  x, y = 0.4 * (xx - side / 2 + 0.5), 0.4 * (yy - side / 2 + 0.5)  # mm, 0.4 mm pitch, never exactly 0
  z = 400.0 + 3.0 * np.sin(x / 7.0) * np.cos(y / 5.0) + 0.01 * rng.standard_normal((side, side))
  return np.where(inside[..., None], np.stack([x, y, z], -1), 0).astype(np.float32), inside


def organised_cloud(side: int, radius: float, seed: int = 0) -> np.ndarray:
  """Valid points [N, 3] of `organised_scan` in raster order."""
  scan, inside = organised_scan(side, radius, seed)
  return scan[inside]


def bench_group(sizes: Sizes, repeats: int) -> list[Row]:
  cloud = organised_cloud(sizes.cloud_side, sizes.cloud_radius)
  points, valid = (x[None] for x in buckets.pad_points(cloud))
  points, valid = jnp.asarray(points), jnp.asarray(valid)
  tcloud = torch.from_numpy(cloud)
  rows = []
  for g, k in sizes.groups:
    compile_first, ours = timing.timed(_jax_call(knn.group, points, valid, g, k), repeats)
    _, ref = timing.timed(_no_grad(torch_pipeline.knn_group, tcloud, g, k), repeats)
    _, fps_ours = timing.timed(_jax_call(fps.farthest_point_sample, points, valid, g), repeats)
    _, fps_ref = timing.timed(_no_grad(torch_point_mae.fps, tcloud, g), repeats)
    rows.append(Row('group', f'FPS + kNN grouping, {len(cloud):,} valid points (padded to {points.shape[1]:,}), '
                    f'{g}×{k}', ours, ref, compile_first - ours,
                    'pointnet2 FPS loop in torch ops + `cdist`/`topk`',
                    note=f'FPS alone: ours {fps_ours * 1e3:.1f} ms, reference {fps_ref * 1e3:.1f} ms. Ours runs on '
                         'the bucket-padded cloud as the pipeline does.'))
    batch = jnp.repeat(points, PIPELINE_BATCH, axis=0), jnp.repeat(valid, PIPELINE_BATCH, axis=0)
    compile_first, ours_b = timing.timed(_jax_call(knn.group, *batch, g, k), repeats)
    _, fps_b = timing.timed(_jax_call(fps.farthest_point_sample, *batch, g), repeats)
    rows.append(Row('group', f'FPS + kNN grouping, {g}×{k}, per cloud in a batch of {PIPELINE_BATCH}',
                    ours_b / PIPELINE_BATCH, ref, (compile_first - ours_b),
                    'the reference groups one cloud at a time (its time per cloud, as above)',
                    note=f'The pipeline\'s extraction batch; ours: one call on {PIPELINE_BATCH} copies of the cloud, '
                         f'÷ {PIPELINE_BATCH}. FPS alone per cloud: {fps_b / PIPELINE_BATCH * 1e3:.1f} ms.'))
  return rows


def bench_vit(sizes: Sizes, repeats: int) -> list[Row]:
  model = vit.VisionTransformer(**sizes.vit)
  size = model.img_size
  images = jnp.asarray(np.random.default_rng(0).standard_normal((1, size, size, 3), dtype=np.float32))
  params = random_params(model.init, images)
  apply = jax.jit(lambda p, x: model.apply(p, x)[0])
  first, ours = timing.timed(_jax_call(apply, params, images), repeats)
  ref_model = torch_pipeline.dino_vit(size, model.patch_size, model.dim, model.depth, model.num_heads)
  timages = torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
  _, ref = timing.timed(_no_grad(lambda x: ref_model(pixel_values=x).last_hidden_state, timages), repeats)
  name = 'ViT-B/8' if not sizes.vit else f'ViT dim {model.dim} depth {model.depth}'
  return [Row('vit', f'{name} forward at {size}², batch 1, random weights', ours, ref, first - ours,
              f'transformers `ViTModel` (DINO config, attention "{ref_model.config._attn_implementation}")',
              gflop=vit_flops(**dataclasses.asdict(model)) / 1e9,
              note='timm (the reference\'s builder) cannot be imported here: it imports torchvision, which cannot '
                   'load beside the CPU-only torch wheel; HF ViTModel is the same architecture.')]


def bench_point_mae(sizes: Sizes, repeats: int) -> list[Row]:
  g, k = sizes.point_mae_group
  cloud = organised_cloud(sizes.cloud_side, sizes.cloud_radius)
  points, valid = (jnp.asarray(x[None]) for x in buckets.pad_points(cloud))
  neighborhood, centers = knn.group(points, valid, g, k)
  model = point_mae.PointMAE(**sizes.point_mae)
  variables = random_params(model.init, neighborhood, centers)
  apply = jax.jit(lambda v, n, c: model.apply(v, n, c)[0])
  first, ours = timing.timed(_jax_call(apply, variables, neighborhood, centers), repeats)
  ref_model = torch_point_mae.PointMAEEncoder(model.dim, model.depth, model.num_heads,
                                              tuple(model.out_blocks)).train()  # batch-stat BN (algorithms.md §2.3)
  tn, tc = torch.from_numpy(np.array(neighborhood[0])), torch.from_numpy(np.array(centers[0]))
  _, ref = timing.timed(_no_grad(ref_model, tn, tc), repeats)
  return [Row('point_mae', f'PointMAE encoder forward, {g}×{k} groups, batch 1, random weights', ours, ref,
              first - ours, 'references/ PyTorch PointMAE encoder (train-mode BN)',
              gflop=point_mae_flops(g, k, model.dim, model.depth) / 1e9,
              note='Grouping excluded (see the FPS + kNN rows). BatchNorm uses per-cloud batch statistics, '
                   'DropPath off, on both sides.')]


def bench_extract(sizes: Sizes, repeats: int) -> list[Row]:
  """`features.extract` of the pipeline's batch (ViT + PointMAE backbones, IDW, pixel plane, pooling) per sample,
  against the reference's one sample at a time (algorithms.md §1.1: batch size 1) in torch."""
  g, k = sizes.point_mae_group
  rng = np.random.default_rng(0)
  scans = [organised_scan(sizes.cloud_side, sizes.cloud_radius, seed=i) for i in range(PIPELINE_BATCH)]
  vit_model, mae_model = vit.VisionTransformer(**sizes.vit), point_mae.PointMAE(**sizes.point_mae)
  size = vit_model.img_size
  samples = [{'rgb': rng.standard_normal((size, size, 3), dtype=np.float32), 'xyz': scan} for scan, _ in scans]
  rgb = backbones.DinoVitB8(random_params(vit_model.init, jnp.zeros((1, size, size, 3))), vit_model)
  point = backbones.PointMaeBackbone(random_params(mae_model.init, jnp.zeros((1, 2, 4, 3)), jnp.zeros((1, 2, 3))),
                                     num_group=g, group_size=k, model=mae_model)
  first, ours = timing.timed(lambda: features.extract(rgb, point, samples, PIPELINE_BATCH), repeats)

  ref_vit = torch_pipeline.dino_vit(size, vit_model.patch_size, vit_model.dim, vit_model.depth, vit_model.num_heads)
  ref_mae = torch_point_mae.PointMAEEncoder(mae_model.dim, mae_model.depth, mae_model.num_heads,
                                            tuple(mae_model.out_blocks)).train()  # batch-stat BN (algorithms.md §2.3)
  scan, inside = scans[0]
  image = torch.from_numpy(samples[0]['rgb'].transpose(2, 0, 1)[None].copy())
  cloud, pixels = torch.from_numpy(scan[inside]), torch.from_numpy(np.flatnonzero(inside))

  def reference():
    ref_vit(pixel_values=image)
    neighborhood, centers = torch_pipeline.knn_group(cloud, g, k)
    feats = ref_mae(neighborhood, centers)
    return torch_pipeline.point_features_to_grid(cloud, centers, feats, pixels, sizes.cloud_side)

  _, ref = timing.timed(_no_grad(reference), repeats)
  return [Row('extract', f'feature extraction per sample in a batch of {PIPELINE_BATCH}: ViT forward + PointMAE '
              f'{g}×{k} (grouping, encoder, IDW onto {int(inside.sum()):,} points, pixel plane, pooling to 56²)',
              ours / PIPELINE_BATCH, ref, (first - ours), 'the same in torch, one sample at a time (the '
              'reference\'s loaders use batch 1)',
              note=f'Ours: `features.extract` on {PIPELINE_BATCH} samples, ÷ {PIPELINE_BATCH}; on CPU each sample '
                   'runs alone through the backbones (`distributed.batch_parallel`). Reference: HF ViTModel, the '
                   'FPS loop + `cdist`/`topk` grouping, the references/ PointMAE encoder, `cdist`/`topk(3)` '
                   'IDW and `avg_pool2d` + `adaptive_avg_pool2d`. Random weights on both sides.')]


def bench_coreset(sizes: Sizes, repeats: int) -> list[Row]:
  n = sizes.coreset_rows
  c = mb.projection_dim(n, 0.9)
  k = mb.coreset_size(n, 0.1)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((n, c), dtype=np.float32)
  dist0 = np.sqrt(np.sum(np.square(z - z[0]), axis=1))
  rows = []
  for fp16 in (True, False):
    dt = np.float16 if fp16 else np.float32
    zj, dj = jnp.asarray(z.astype(dt)), jnp.asarray(dist0)
    start = time.perf_counter()
    mesh = distributed.make_mesh()
    mb.greedy_k_center(zj, dj, k=2, fp16=fp16, mesh=mesh)  # one iteration: the compilation, for every length
    compile_s = time.perf_counter() - start
    _, set_up = timing.timed(lambda: mb.greedy_k_center(zj, dj, k=2, fp16=fp16, mesh=mesh), repeats)
    ours_it = statistics.median(bank_memory.greedy_seconds_per_iteration(zj, dj, sizes.coreset_iters_jax, fp16,
                                                                         mesh)[0] for _ in range(repeats))
    zt, dt0 = torch.from_numpy(z).to(torch.float16 if fp16 else torch.float32), torch.from_numpy(dist0)
    _, ref = timing.timed(_no_grad(torch_pipeline.greedy_coreset, zt, dt0, sizes.coreset_iters_torch, fp16), repeats)
    # ours: a one-iteration call (placing the bank on the devices) plus the steady per-iteration cost
    ref_it = ref / sizes.coreset_iters_torch
    precision = 'fp16' if fp16 else 'fp32'
    rows.append(Row('coreset', f'greedy coreset {precision}, {n:,}×{c} projected bank, k = {k:,} '
                    '(extrapolated)', set_up + ours_it * (k - 2), ref_it * (k - 1), compile_s,
                    f'the reference\'s torch greedy loop in {precision} on CPU',
                    note=f'EXTRAPOLATED: timed {sizes.coreset_iters_jax} (ours: the steady loop, its set-up, a '
                         f'one-iteration call of {set_up * 1e3:.0f} ms, counted once) / {sizes.coreset_iters_torch} '
                         f'(reference) iterations, ×(k−1) = {k - 1:,}. Per iteration: ours {ours_it * 1e3:.2f} ms, '
                         f'reference {ref_it * 1e3:.2f} ms. The one-pass sparse projection is excluded on both '
                         'sides; the bank is random. Compile time: a one-iteration call (the program serves any '
                         'length).'))
  return rows


def bench_knn(sizes: Sizes, repeats: int) -> list[Row]:
  rows = []
  for what, m, d in sizes.knn_banks:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((m, d), dtype=np.float32)
    queries = rng.standard_normal((sizes.knn_queries, d), dtype=np.float32)
    start = time.perf_counter()
    placed = jax.block_until_ready(mb.place_bank(bank, distributed.make_mesh()))
    place_s = time.perf_counter() - start
    first, ours = timing.timed(lambda: mb.knn_search(queries, placed, sizes.knn_k), repeats)
    tb, tq = torch.from_numpy(bank), torch.from_numpy(queries)
    _, ref = timing.timed(_no_grad(torch_pipeline.nearest_neighbours, tq, tb, sizes.knn_k), repeats)
    rows.append(Row('knn', f'{sizes.knn_k}-NN of {sizes.knn_queries:,} queries in a {m:,}×{d} bank ({what})', ours,
                    ref, first - ours, '`torch.cdist` + `topk(largest=False)`',
                    gflop=2 * sizes.knn_queries * m * d / 1e9,
                    note=f'Placing the bank on the device once per class: {place_s:.2f} s (not in the median). '
                         f'Ours also re-ranks the best {sizes.knn_k}+8 candidates with exact float32 differences.'))
  return rows


def bench_clean(sizes: Sizes, repeats: int) -> list[Row]:
  """The two Open3D calls of algorithms.md §1.2 (RANSAC plane on the border points, DBSCAN on what is left) on one scan.
  """
  from references import open3d_preprocessing  # imports open3d: only this stage needs it
  _, xyz, _ = synthetic.render_sample('cube', 'good', sizes.clean_size, 0, fov=0.16)
  edges = preprocessing.border_points(xyz)
  settings = (preprocessing.PLANE_RANSAC_THRESHOLD, preprocessing.PLANE_RANSAC_N,
              preprocessing.PLANE_RANSAC_ITERATIONS)
  cleaned, _, _ = preprocessing.remove_plane(xyz, None, seed=0)
  points = cleaned[transforms.valid_mask(cleaned)].astype(np.float64)
  dbscan_args = (points, preprocessing.DBSCAN_EPS, preprocessing.DBSCAN_MIN_POINTS)
  labels = {}  # each side's last DBSCAN labels, compared after the timing (Open3D takes ~40 s per call at 800²)

  def ours_calls():
    plane.segment_plane(edges, *settings, seed=0)
    labels['ours'] = dbscan.cluster_dbscan(*dbscan_args)

  def ref_calls():
    open3d_preprocessing.segment_plane(edges, *settings, seed=0)
    labels['ref'] = open3d_preprocessing.cluster_dbscan(*dbscan_args)

  _, ours = timing.timed(ours_calls, repeats)
  _, ref = timing.timed(ref_calls, sizes.clean_ref_repeats)
  same = np.array_equal(labels['ours'], labels['ref'])
  return [Row('clean', f'scan cleaning (RANSAC plane + DBSCAN), {sizes.clean_size}² synthetic scan, '
                       f'{len(points):,} points', ours, ref, math.nan,
              'Open3D `segment_plane` + `cluster_dbscan` (the reference preprocessing)',
              note=f'Ours: NumPy (`data/plane.py`, `data/dbscan.py`); DBSCAN labels '
                   f'{"identical" if same else "DIFFERENT"}. Reference: median of {sizes.clean_ref_repeats} '
                   'call(s) after a warm-up.')]


def bench_aupro(sizes: Sizes, repeats: int) -> list[Row]:
  masks, maps = aupro_speed.make_class(0, sizes.aupro_images, sizes.aupro_size)
  limits = metrics.DEFAULT_LIMITS
  _, ours = timing.timed(lambda: metrics.aupro(masks, maps, limits, 100), repeats)
  _, ref = timing.timed(lambda: aupro_speed.loop_aupro(masks, maps, limits, 100), repeats)
  s = sizes.aupro_size
  return [Row('aupro', f'AUPRO, 100 thresholds, {sizes.aupro_images} images of {s}×{s}', ours, ref, math.nan,
              'per-threshold loop (benchmarks/aupro_speed.py)',
              note='Both sides are NumPy (ours: `metrics.aupro`, vectorised over thresholds); no JAX involved.')]


def bench_lspn(sizes: Sizes, repeats: int) -> list[Row]:
  config = get_base_config()
  c = config.g2sf
  c.hidden, c.emb_dim, c.batch_size = sizes.lspn_hidden, sizes.lspn_emb, sizes.lspn_batch
  b, (dr, dp), (kr, kp) = sizes.lspn_batch, sizes.lspn_dims, sizes.lspn_coreset_rows
  cols = config.memory_bank.num_anchors
  rng = np.random.default_rng(0)
  coresets = (rng.standard_normal((kr, dr), dtype=np.float32), rng.standard_normal((kp, dp), dtype=np.float32))
  anchor_idx = np.concatenate([rng.integers(0, kr, (b, cols)), rng.integers(0, kp, (b, cols))], 1).astype(np.int32)
  normal = rng.random(b) < 0.5
  feature = np.concatenate([coresets[0][anchor_idx[:, 0]], coresets[1][anchor_idx[:, cols]]], 1)
  feature += np.where(normal, 0.3, 0.6)[:, None].astype(np.float32) * rng.standard_normal(feature.shape,
                                                                                       dtype=np.float32)
  dist = np.stack([np.linalg.norm(feature[:, :dr] - coresets[0][anchor_idx[:, 0]], axis=1),
                   np.linalg.norm(feature[:, dr:] - coresets[1][anchor_idx[:, cols]], axis=1)], 1)
  mu = dist[normal].mean(0).astype(np.float32)
  margin = float(2 * (dist[~normal] / mu).max())

  mesh = distributed.make_mesh()
  rep, rows_sh = distributed.replicated(mesh), distributed.row_sharded(mesh)
  train_step, _, tx = fusion_train.make_steps(c, mesh)
  params = random_params(lambda k: fusion_train.init_params(config, k, dr + dp))
  state = list(jax.device_put((params, jax.jit(tx.init)(params)), rep))
  batch = jax.device_put({'feature': feature, 'anchor_idx': anchor_idx, 'normal': normal}, rows_sh)
  dev = jax.device_put((tuple(jnp.asarray(x) for x in coresets), jnp.asarray(mu), jnp.float32(margin)), rep)
  key = jax.random.key(1)

  def ours_step():
    p, o, terms = train_step(state[0], state[1], batch, *dev, key)  # params and optimiser state are donated
    jax.block_until_ready(terms['loss'])
    state[:] = [p, o]

  first, ours = timing.timed(ours_step, repeats)
  trainer = torch_pipeline.LspnTrainer(tuple(torch.from_numpy(x) for x in coresets), torch.from_numpy(mu),
                                        margin, c.hidden, c.emb_dim, c.anchor)
  targs = (torch.from_numpy(feature), torch.from_numpy(anchor_idx.astype(np.int64)), torch.from_numpy(normal))
  _, ref = timing.timed(lambda: trainer.step(*targs), repeats)
  return [Row('lspn', f'LSPN training step, batch {b:,} (12 LSPN forwards + 6 losses + backward + Adam)', ours, ref,
              first - ours, 'torch step from references/ GateNet + losses, two `torch.optim.Adam`',
              gflop=lspn_step_flops(b, dr + dp, c.hidden, c.emb_dim) / 1e9,
              note=f'Coresets {kr:,}×{dr} and {kp:,}×{dp} (random); batch already on the device. L_cns in the '
                   f'reference B×B form on both sides ({c.anchor} tensors of {b:,}²). FLOPs ≈ 3× the forward '
                   'matmuls.')]


def bench_peak(sizes: Sizes, repeats: int) -> list[Limit]:
  n = sizes.matmul_n
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=_HIGHEST))
  calls = max(repeats, 3)
  t_jax = _fastest(_jax_call(dot, jnp.asarray(a), jnp.asarray(b)), calls)
  t_torch = _fastest(_no_grad(torch.mm, torch.from_numpy(a), torch.from_numpy(b)), calls)
  flop = 2 * n ** 3
  return [Limit('peak', f'float32 matmul peak ({n}×{n} @ {n}×{n})', flop / t_jax / 1e9, flop / t_torch / 1e9,
                'GFLOP/s', note=f'fastest of {calls} calls after a warm-up; `jnp.dot` (HIGHEST) and `torch.mm`')]


def bench_bank_rss(sizes: Sizes, repeats: int) -> list[Limit]:
  cmd = [sys.executable, '-m', 'benchmarks.bank_memory', *sizes.bank_args]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
  rss = [float(x) for x in re.findall(r'peak RSS\s+([\d.]+) GiB', out)]
  bank = re.search(r'bank (\d+) x (\d+)', out)
  per_iter = re.search(r'greedy ([\d.]+) ms/iteration', out)
  full = re.search(r'extrapolated full greedy loop .*: ([\d.]+) h', out)
  phases = re.findall(r'^\s*([^:\n]+):\s+([\d.]+) s\s+peak RSS\s+([\d.]+) GiB', out, re.M)
  note = (f'`{shlex.join(["python", *cmd[1:]])}` (subprocess, JAX only). Phases (time, peak RSS so far): '
          + ', '.join(f'{k.strip()} {float(t):.1f} s / {float(r):.2f} GiB' for k, t, r in phases))
  if per_iter:
    note += f'; greedy fp16 {per_iter.group(1)} ms/iteration'
  if full:
    note += f', full loop EXTRAPOLATED to {full.group(1)} h'
  out_rows = [Limit('bank_rss', f'peak RSS building a {int(bank.group(1)):,}×{int(bank.group(2))} bank (fill, '
                    'normaliser, projection, greedy, gather)', rss[-1], math.nan, 'GiB', note=note)]
  floor = re.search(r'memory floor: .*\(([\d.]+) MB\) ([\d.]+) ms = ([\d.]+) GB/s', out)
  ref = re.search(r'greedy reference mode: ([\d.]+)x the floor', out)
  fast = re.search(r'greedy fast mode: ([\d.]+) ms/iteration = ([\d.]+)x the floor; its first (\d+) of (\d+)', out)
  per_row = re.search(r'greedy per row: ([\d.]+) ns over the whole bank, ([\d.]+) ns over its first (\d+) rows', out)
  if floor and ref and fast and per_row:
    out_rows.append(Limit(
        'bank_rss', 'greedy coreset iteration on that bank ÷ one read pass over its projected fp16 bank (the '
        'memory-bandwidth floor)', float(ref.group(1)), math.nan, '× floor',
        note=f'floor {floor.group(2)} ms ({floor.group(1)} MB at {floor.group(3)} GB/s, NumPy read pass, same run); '
             f'reference-arithmetic mode {per_iter.group(1) if per_iter else "?"} ms/iteration; `fast` mode '
             f'{fast.group(1)} ms/iteration = {fast.group(2)}× the floor, its first {fast.group(3)} of '
             f'{fast.group(4)} picks equal the reference mode\'s; per row {per_row.group(1)} ns over the whole bank vs '
             f'{per_row.group(2)} ns over its first {int(per_row.group(3)):,} rows (cache-resident)'))
  return out_rows


BENCHES = {'peak': bench_peak, 'clean': bench_clean, 'group': bench_group, 'vit': bench_vit,
           'point_mae': bench_point_mae, 'extract': bench_extract, 'coreset': bench_coreset, 'knn': bench_knn,
           'aupro': bench_aupro, 'lspn': bench_lspn, 'bank_rss': bench_bank_rss}
