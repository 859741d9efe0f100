"""CFM on the generated synthetic dataset with the offline pair (EfficientNet-Lite0 + FPFH): no download needed.

Run: python -m experiments.run --config cfm_synthetic
Shares runs/synthetic with the G²SF default (`make run`): it reuses the prepared data and extracted features and
trains its two mapping networks per class with the reference's schedule (50 epochs, batches of 4, Adam 1e-3).
Time on a 2-core CPU: ~11 min after `make run`.
Expected (mean of cube, cylinder, torus; I-AUROC / P-AUROC / AUPRO@30% / AUPRO@1%; AUPRO with CFM's 99
thresholds): seed 0 CFM 0.821 / 0.985 / 0.935 / 0.319; seed 1 0.775 / 0.985 / 0.931 / 0.324.
"""
from experiments.configs import synthetic


def get_config():
  c = synthetic.get_config()
  c.method = 'cfm'
  return c
