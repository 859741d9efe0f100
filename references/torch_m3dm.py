"""PyTorch reference for M3DM's UFF and its per-bank scoring, written from the official code's behaviour (test-only).

It keeps the reference's tensor handling on purpose: boolean selection of the kept patches, the N×N logits of the
whole micro-batch, the three-bank re-weighting without ε, torch's bilinear upsampling.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class FeatureFusionBlock(nn.Module):
  """State-dict keys of `models/feature_fusion.py::FeatureFusionBlock` (xyz_norm, xyz_mlp, rgb_*, *_head)."""

  def __init__(self, xyz_dim, rgb_dim, mlp_ratio=4.0, head=256):
    super().__init__()
    self.xyz_norm = nn.LayerNorm(xyz_dim)
    self.xyz_mlp = Mlp(xyz_dim, int(xyz_dim * mlp_ratio))
    self.rgb_norm = nn.LayerNorm(rgb_dim)
    self.rgb_mlp = Mlp(rgb_dim, int(rgb_dim * mlp_ratio))
    self.rgb_head = nn.Linear(rgb_dim, head)
    self.xyz_head = nn.Linear(xyz_dim, head)
    self.T = 1

  def feature_fusion(self, xyz, rgb):
    return torch.cat([self.xyz_mlp(self.xyz_norm(xyz)), self.rgb_mlp(self.rgb_norm(rgb))], dim=-1)

  def forward(self, xyz, rgb):
    """xyz [B, P, Dx], rgb [B, P, Dr] → the contrastive loss over the kept patches (no zero in the xyz input)."""
    fused = self.feature_fusion(xyz, rgb)
    dx = xyz.shape[-1]
    q = self.rgb_head(fused[..., dx:]).reshape(-1, self.rgb_head.out_features)
    k = self.xyz_head(fused[..., :dx]).reshape(-1, self.xyz_head.out_features)
    keep = torch.all(xyz.reshape(-1, dx) != 0, dim=1)
    q, k = F.normalize(q[keep], dim=1), F.normalize(k[keep], dim=1)
    logits = q @ k.T / self.T
    labels = torch.arange(len(q))
    return nn.CrossEntropyLoss()(logits, labels) * 2 * self.T


def bank_score(patches, bank):
  """`compute_single_s_s_map` of the three-bank class: patches [P, D], bank [M, D] → (s, min_val [P])."""
  dist = torch.cdist(patches.double(), bank.double()).float()
  min_val, min_idx = torch.min(dist, dim=1)
  s_idx = torch.argmax(min_val)
  s_star = min_val[s_idx]
  m_star = bank[min_idx[s_idx]].unsqueeze(0)
  _, nn_idx = torch.topk(torch.cdist(m_star.double(), bank.double()).float(), k=3, largest=False)
  knn = torch.linalg.norm(patches[s_idx] - bank[nn_idx[0, 1:]], dim=1)
  d = torch.sqrt(torch.tensor(float(patches.shape[1])))
  w = 1 - torch.exp(s_star / d) / torch.sum(torch.exp(knn / d))
  return w * s_star, min_val


def upsample224(min_val, grid):
  return F.interpolate(min_val.reshape(1, 1, grid, grid), size=224, mode='bilinear', align_corners=False)[0, 0]
