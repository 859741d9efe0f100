"""G²SF (Geometry-Guided Score Fusion, ICCV 2025, algorithms.md §4): anomaly synthesis (`synthesis.py`, `perlin.py`),
the fusion dataset (`dataset.py`), the LSPN network (`lspn.py`), its losses and training (`losses.py`, `train.py`),
inference (`infer.py`), config sections `synthesis` and `g2sf` (`defaults.py`), the method (`method.py`, what the
registry exposes). See README.md."""
