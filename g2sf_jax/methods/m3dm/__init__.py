"""M3DM (hybrid fusion, CVPR 2023): UFF training (`uff.py`), decision-layer fusion (`dlf.py`), the method
(`method.py`, what the registry exposes)."""
