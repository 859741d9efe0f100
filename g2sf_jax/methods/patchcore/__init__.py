"""PatchCore per modality (Roth et al., CVPR 2022), the IMG and PCD rows: banks (`method.py`), config section
`memory_bank` (`defaults.py`). The memory-bank machinery itself is `g2sf_jax.memory_bank`. See README.md."""
