"""PyTorch (and Open3D) versions of what the original research code computes: the oracles of the parity tests in
`tests/` and the reference side of the speed benchmarks in `benchmarks/`.

Each module re-implements one part of an official repository in plain PyTorch with its layouts and quirks (the
PointMAE encoder and FPS, the G²SF LSPN and losses, M3DM's fusion, CFM's networks, EfficientNet-Lite0, Open3D's
scan cleaning). They are not part of the installed package: run tests and benchmarks from a checkout.
"""
