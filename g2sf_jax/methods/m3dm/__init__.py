"""M3DM (Wang et al., CVPR 2023): the UFF network (`uff_net.py`) and its training (`uff.py`), decision-layer fusion
(`dlf.py`), config section `m3dm` (`defaults.py`), the method (`method.py`, what the registry exposes). See README.md.
"""
