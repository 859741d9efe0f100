"""BTF (Horwitz & Hoshen, "Back to the Feature", CVPRW 2023): PatchCore on concatenated RGB + point features
(`method.py`). See README.md."""
