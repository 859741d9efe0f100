"""G²SF on Eyecandies (all 10 classes) with the paper's backbones (DINO ViT-B/8 + PointMAE).

Run: python -m experiments.run --config eyecandies --config.raw_dir=/path/to/Eyecandies
Needs the converted checkpoints (python -m ports.dino_vit …, python -m ports.point_mae …).
Expected (paper, FUS row, mean of 10 classes): I-AUROC 90.2, P-AUROC 98.2, AUPRO@30% 89.8, AUPRO@1% 35.7.
Time: of the order of the mvtec config per class (BENCHMARKS.md, full-size rehearsal); run it on an accelerator.
"""
from experiments.configs import common


def get_config():
  c = common.get_base_config()
  c.dataset = 'eyecandies'
  c.workdir = 'runs/eyecandies'
  c.synthesis.num_sources = 24
  return c
