"""PatchCore's config section `memory_bank`: the banks and coresets every bank-based method builds (PatchCore, BTF,
G²SF, M3DM), algorithms.md §3. `experiments/configs/common.py` puts it at `config.memory_bank`."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.coreset_fraction = 0.1
  c.coreset_eps = 0.9
  c.coreset_fp16 = True      # the reference's fp16 greedy distances (algorithms.md §3.2)
  c.coreset_mode = 'reference'  # reference (differences, as the code) | fast (‖z‖²−2z·zₗ+‖zₗ‖²)
  c.num_anchors = 20
  return c
