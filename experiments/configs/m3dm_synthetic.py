"""M3DM on the generated synthetic dataset with the offline pair (EfficientNet-Lite0 + FPFH): no download needed.

Run: python -m experiments.run --config m3dm_synthetic
Shares runs/synthetic with the G²SF default (`make run`): it reuses the prepared data and extracted features and
adds its own stages. The UFF schedule is shortened for a CPU (40 updates of 8 samples instead of the paper's 750 of
256), and UFF training patches are those with any non-zero FPFH bin (`m3dm.uff_keep='foreground'`: FPFH histograms
have empty bins, so the reference's "no exact zero" rule, made for PointMAE, would keep none); everything else is
the reference's.
Time on a 2-core CPU: ~1.4 min after `make run`.
Expected (mean of cube, cylinder, torus; I-AUROC / P-AUROC / AUPRO@30% / AUPRO@1%): seed 0 M3DM 0.792 / 0.967 /
0.891 / 0.249; seed 1 0.716 / 0.937 / 0.832 / 0.186. Below its own PCD row at this shortened schedule.
"""
from experiments.configs import synthetic


def get_config():
  c = synthetic.get_config()
  c.method = 'm3dm'
  c.m3dm.uff_keep = 'foreground'  # FPFH histograms have empty bins: the reference's no-zero rule would keep nothing
  c.m3dm.uff.steps = 40
  c.m3dm.uff.warmup_steps = 10
  c.m3dm.uff.batch_size = 8
  c.m3dm.uff.accum = 1
  return c
