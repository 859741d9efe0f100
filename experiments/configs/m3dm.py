"""M3DM (hybrid fusion, CVPR 2023) on MVTec 3D-AD with the paper's backbones (DINO ViT-B/8 + PointMAE 1024 × 128).

Run: python -m experiments.run --config m3dm --config.raw_dir=/path/to/mvtec_3d_anomaly_detection
Needs the converted checkpoints (python -m ports.dino_vit …, python -m ports.point_mae …). Eyecandies:
--config.dataset=eyecandies --config.raw_dir=/path/to/Eyecandies --config.workdir=runs/eyecandies_m3dm.
Rows: IMG, PCD (M3DM's own banks) and M3DM. The UFF trains once on every class's training patches.
Expected (paper, M3DM row, mean of 10 classes): I-AUROC 94.5, P-AUROC 99.2, AUPRO@30% 96.4.
Time: hours per class on a CPU (three coresets, the UFF's 750 updates); run it on an accelerator.
"""
from experiments.configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.method = 'm3dm'
  c.point_mae.num_group = 1024  # M3DM's grouping (G²SF uses 512)
  return c
