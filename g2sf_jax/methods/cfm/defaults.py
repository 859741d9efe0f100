"""CFM's config section `cfm`, at `config.cfm`: the official code's choices by default (algorithms.md App. C)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.epochs = 50
  c.batch_size = 4                   # training images per batch
  c.lr = 1e-3
  c.distance = 'euclid'              # euclid (the code: ‖n(pred) − n(obs)‖) | cosine (1 − cos)
  c.normalisation = 'reference'      # reference (the code's three per-image normalisations) | none
  c.cache_gb = 4.0                   # hold the training set's 224² point features in memory up to this size
  return c
