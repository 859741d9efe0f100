"""CFM (Costanzino et al., CVPR 2024): the mapping networks (`mlp.py`), per-pixel features (`features.py`), training
(`train.py`), anomaly maps (`infer.py`), config section `cfm` (`defaults.py`), the method (`method.py`). See
README.md."""
