"""CFM (crossmodal feature mapping, CVPR 2024): per-pixel features (`features.py`), training (`train.py`), the
anomaly maps (`infer.py`) and the method (`method.py`, what the registry exposes)."""
