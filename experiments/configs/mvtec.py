"""G²SF on MVTec 3D-AD with the paper's backbones (DINO ViT-B/8 + PointMAE, 512 × 128 groups).

Run: python -m experiments.run --config mvtec --config.raw_dir=/path/to/mvtec_3d_anomaly_detection
Needs the converted checkpoints (python -m ports.dino_vit …, python -m ports.point_mae …).
Expected (paper, FUS row, mean of 10 classes): I-AUROC 97.1, P-AUROC 99.7, AUPRO@30% 97.9, AUPRO@1% 46.8.
Time: ~57 h per class on a 2-core CPU by the full-size rehearsal (BENCHMARKS.md), ~53 h of it LSPN training; run it
on an accelerator.
"""
from experiments.configs import common


def get_config():
  c = common.get_base_config()
  c.dataset = 'mvtec3d'
  c.workdir = 'runs/mvtec3d'
  return c
