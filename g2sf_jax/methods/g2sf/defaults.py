"""G²SF's config sections: `synthesis` (the anomaly synthesis of the fusion data, algorithms.md §4.2–4.3) and
`g2sf` (the LSPN, its training and scoring, §4.4–4.6), at `config.synthesis` and `config.g2sf`."""
import ml_collections


def synthesis_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_anomalies = 800
  c.num_sources = 8            # anomaly-source clouds per class (Eyecandies: 24)
  c.source_classes = ''        # whose clouds: '' = the run's classes (as the reference, on a full run)
  return c


def g2sf_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.hidden = 512
  c.emb_dim = 128
  c.dropout = 0.5
  c.anchor = 5
  c.lr = 1.5e-4
  c.lr_scale = 5e-3
  c.weight_decay = 1e-4
  c.epochs = 80
  c.batch_size = 8192
  c.alpha = 2.0
  c.magnitude = 1.2
  c.w_margin = 10.0
  c.w_consistency = 40.0
  c.w_alignment = 20.0
  c.w_scaling = 3.0
  c.w_l1 = 5e-4
  c.consistency = 'reference'       # reference (B×B broadcast, algorithms.md §4.5c) | per_row
  c.scoring_mode = 'min'            # min | max | average | zero
  return c
