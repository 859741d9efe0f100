"""CFM (crossmodal feature mapping, CVPR 2024) on MVTec 3D-AD with the paper's backbones (DINO ViT-B/8 +
PointMAE 1024 × 128).

Run: python -m experiments.run --config cfm --config.raw_dir=/path/to/mvtec_3d_anomaly_detection
Needs the converted checkpoints (python -m ports.dino_vit …, python -m ports.point_mae …). Row: CFM.
Expected (paper, mean of 10 classes): I-AUROC 95.4, P-AUROC 99.3, AUPRO@30% 97.1.
Time: hours per class on a CPU (50 epochs over every 224² training pixel); run it on an accelerator.
"""
from experiments.configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.method = 'cfm'
  c.point_mae.num_group = 1024
  return c
