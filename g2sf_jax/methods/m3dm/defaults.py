"""M3DM's config section `m3dm`, at `config.m3dm`: the official code's choices by default (algorithms.md App. C)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.normalisation = 'reference'     # reference (every bank: the point bank's mean, the RGB bank's std) | per_bank
  c.coreset_sizes = 'reference'     # reference (RGB and fused: fraction × the point coreset) | per_bank
  c.uff_pairing = 'reference'       # reference (scrambled RGB/point training pairs) | aligned
  c.uff_keep = 'reference'          # reference (no exact zero in the point feature) | foreground (not all 0)
  c.uff_classes = ''               # whose training patches train the UFF: '' = the run's classes
  c.lambdas = (1.0, 0.1, 1.0)       # DLF input weights: point, RGB, fused
  c.ocsvm_nu = 0.5
  c.ocsvm_max_iter = 1000
  c.uff = ml_collections.ConfigDict()
  c.uff.schedule = 'paper'          # paper (steps, warm-up in updates) | code (epochs, warm-up over 1 epoch)
  c.uff.steps = 750                 # paper: 750 updates ...
  c.uff.warmup_steps = 250          # ... the first 250 warming up from 0
  c.uff.epochs = 3                  # code schedule
  c.uff.warmup_epochs = 1           # code schedule
  c.uff.lr = 0.003
  c.uff.betas = (0.9, 0.95)
  c.uff.weight_decay = 0.01         # torch's AdamW default: the script ignores --weight_decay
  c.uff.batch_size = 16             # samples per contrastive batch (every kept patch of them is a negative)
  c.uff.accum = 16                  # contrastive batches per update (16 × 16 = 256 samples)
  c.uff.temperature = 1.0
  return c
