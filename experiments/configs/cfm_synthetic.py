"""CFM on the generated synthetic dataset with the offline pair (EfficientNet-Lite0 + FPFH): no download needed.

Run: python -m experiments.run --config cfm_synthetic
Shares runs/synthetic with the G²SF default (`make run`): it reuses the prepared data and extracted features and
trains its two mapping networks per class with the reference's schedule (50 epochs, batches of 4, Adam 1e-3).
Time here and scores: see README "Every method on the synthetic default".
"""
from experiments.configs import synthetic


def get_config():
  c = synthetic.get_config()
  c.method = 'cfm'
  return c
