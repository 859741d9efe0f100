"""Independent PyTorch EfficientNet-Lite0, written from the architecture, for parity tests of the Flax model.

Module names reproduce the state-dict keys of the shipped `efficientnet-lite0-57934424.pth` (`_conv_stem`,
`_bn0`, `_blocks.{i}._expand_conv`, `_depthwise_conv`, `_project_conv`, `_bn{0,1,2}`, `_conv_head`, `_bn1`,
`_fc`), so the file loads with `strict=True`. Padding is TensorFlow 'SAME', spelled out with `F.pad` (extra pixel
bottom/right).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, first stride, expand, out channels): EfficientNet-B0 stages, no SE (Lite0 = width/depth 1.0).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
           (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_EPS = 1e-3


class TfSameConv(nn.Conv2d):
  """Conv2d without bias whose input is padded like TF 'SAME' for the size it receives."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pads = []
    for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return super().forward(F.pad(x, (left, right, top, bottom)))


class Block(nn.Module):

  def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
    super().__init__()
    hidden = cin * expand
    self.expand = expand
    if expand != 1:
      self._expand_conv = TfSameConv(cin, hidden, 1)
      self._bn0 = nn.BatchNorm2d(hidden, eps=_EPS)
    self._depthwise_conv = TfSameConv(hidden, hidden, kernel, stride, groups=hidden)
    self._bn1 = nn.BatchNorm2d(hidden, eps=_EPS)
    self._project_conv = TfSameConv(hidden, cout, 1)
    self._bn2 = nn.BatchNorm2d(cout, eps=_EPS)
    self.skip = stride == 1 and cin == cout

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = x
    if self.expand != 1:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class TorchEfficientNetLite0(nn.Module):

  def __init__(self):
    super().__init__()
    self._conv_stem = TfSameConv(3, 32, 3, 2)
    self._bn0 = nn.BatchNorm2d(32, eps=_EPS)
    blocks, self.stage_ends = [], []
    cin = 32
    for repeats, kernel, stride, expand, cout in _STAGES:
      for r in range(repeats):
        blocks.append(Block(cin, cout, kernel, stride if r == 0 else 1, expand))
        cin = cout
      self.stage_ends.append(len(blocks) - 1)
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = TfSameConv(320, 1280, 1)
    self._bn1 = nn.BatchNorm2d(1280, eps=_EPS)
    self._fc = nn.Linear(1280, 1000)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x: [B,3,H,W] -> (logits [B,1000], {'stem', 'stage0'..'stage6', 'head'} as NCHW)."""
    inter = {}
    x = F.relu6(self._bn0(self._conv_stem(x)))
    inter['stem'] = x
    for i, block in enumerate(self._blocks):
      x = block(x)
      if i in self.stage_ends:
        inter[f'stage{self.stage_ends.index(i)}'] = x
    x = F.relu6(self._bn1(self._conv_head(x)))
    inter['head'] = x
    return self._fc(x.mean(dim=(2, 3))), inter


def load(path: str) -> TorchEfficientNetLite0:
  model = TorchEfficientNetLite0()
  model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True), strict=True)
  return model.eval()
