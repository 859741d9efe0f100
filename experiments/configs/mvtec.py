"""G²SF on MVTec 3D-AD with the paper's backbones (DINO ViT-B/8 + PointMAE, 512 × 128 groups).

Run: python -m experiments.run --config mvtec --config.raw_dir=/path/to/mvtec_3d_anomaly_detection
Needs the converted checkpoints (python -m ports.dino_vit …, python -m ports.point_mae …).
Target (paper, FUS row, mean of 10 classes): I-AUROC 97.1, P-AUROC 99.7, AUPRO@30% 97.9, AUPRO@1% 46.8.
Scores not measured here: the weights and the data are not on this machine. Time, from the full-size synthetic
rehearsal (BENCHMARKS.md, `python -m benchmarks.full_scale`): ~30 h per class on this 2-core CPU, most of it
LSPN training (~24 h) and the one-off DBSCAN of `prepare` (~3.5 h); on an accelerator not yet measured.
"""
from experiments.configs import common


def get_config():
  c = common.get_base_config()
  c.dataset = 'mvtec3d'
  c.workdir = 'runs/mvtec3d'
  return c
