"""PyTorch reference for CFM, written from the official code's behaviour (test-only): the mapping MLP, the two
training losses (two backward passes) and the inference maps with their smoothing and three normalisations."""
import torch
import torch.nn.functional as F
from torch import nn


class FeatureProjectionMLP(nn.Module):
  def __init__(self, in_features, out_features):
    super().__init__()
    hidden = (in_features + out_features) // 2
    self.input = nn.Linear(in_features, hidden)
    self.projection = nn.Linear(hidden, hidden)
    self.output = nn.Linear(hidden, out_features)
    self.act = nn.GELU()

  def forward(self, x):
    return self.output(self.act(self.projection(self.act(self.input(x)))))


def losses(net_23, net_32, rgb, xyz):
  """rgb [B, P, Dr], xyz [B, P, Dp] → (loss 2D→3D, loss 3D→2D) over the pixels with a non-zero feature sum."""
  mask = xyz.sum(-1) == 0
  cos = nn.CosineSimilarity(dim=-1, eps=1e-6)
  xyz_pred, rgb_pred = net_23(rgb), net_32(xyz)
  return 1 - cos(xyz_pred[~mask], xyz[~mask]).mean(), 1 - cos(rgb_pred[~mask], rgb[~mask]).mean()


def maps(net_23, net_32, rgb, xyz):
  """One sample's rows rgb [P, Dr], xyz [P, Dp] → (image score, pixel-AUROC map, AUPRO map), 224×224."""
  mask = xyz.sum(-1) == 0
  with torch.no_grad():
    xyz_pred, rgb_pred = net_23(rgb), net_32(xyz)
    d3 = torch.linalg.norm(F.normalize(xyz_pred, dim=1) - F.normalize(xyz, dim=1), dim=1)
    d2 = torch.linalg.norm(F.normalize(rgb_pred, dim=1) - F.normalize(rgb, dim=1), dim=1)
    d3[mask], d2[mask] = 0.0, 0.0
    comb = (d2 * d3).reshape(1, 1, 224, 224)
    k5 = torch.ones(1, 1, 5, 5) / 25
    k7 = torch.ones(1, 1, 7, 7) / 49
    for _ in range(5):
      comb = F.conv2d(comb, k5, padding=2)
    for _ in range(3):
      comb = F.conv2d(comb, k7, padding=3)
    s = comb[0, 0]
    fg_mean = s[s != 0].mean()
    return (s / torch.sqrt(fg_mean)).max(), s / torch.sqrt(s.mean()), s / fg_mean
