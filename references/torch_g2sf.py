"""PyTorch reference for the G²SF LSPN and losses, written from algorithms.md §4.4–§4.5 (test-only).

It follows the reference code's tensor shapes on purpose: boolean indexing instead of masks, `[B,1]` scores, and the
`[B,1] − [B]` broadcast in the consistency term.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class _Linear(nn.Module):

  def __init__(self, i, o):
    super().__init__()
    self.linear = nn.Linear(i, o)

  def forward(self, x):
    return self.linear(x)


class _Mlp(nn.Module):

  def __init__(self, i, hidden, o, p):
    super().__init__()
    self.network = nn.ModuleList([_Linear(i, hidden), _Linear(hidden, o)])
    self.drop = nn.Dropout(p)

  def forward(self, x):
    return self.network[1](self.drop(F.relu(self.network[0](x))))


class GateNet(nn.Module):
  """Same state-dict keys as `MultiModalGateNet` (algorithms.md §4.4)."""

  def __init__(self, dim, hidden=512, emb=128, p=0.5):
    super().__init__()
    self.residual_transformer = _Mlp(dim, hidden, emb, p)
    self.transformer = _Mlp(dim, hidden, emb, p)
    self.regressor = nn.Sequential(nn.Linear(2 * emb, 2 * emb), nn.ReLU(), nn.Dropout(p), nn.Linear(2 * emb, 2))

  def forward(self, f, m):
    d = 5 * F.normalize(f - m, dim=1, eps=1e-3)
    h = torch.cat([self.residual_transformer(d), self.transformer(m)], dim=1)
    return torch.exp(torch.tanh(self.regressor(h)))


def sigma(theta):
  return F.normalize((1 + torch.tanh(theta)) / 2, p=1, dim=0)


def unified(f, m, w, sig, mu, rgb_dim):
  """Returns (l [B,1], ŝ [B,2])."""
  s_r = F.pairwise_distance(f[:, :rgb_dim], m[:, :rgb_dim]) / mu[0]
  s_p = F.pairwise_distance(f[:, rgb_dim:], m[:, rgb_dim:]) / mu[1]
  s = torch.stack([s_r, s_p], 1)
  return (sig[0] * w[:, :1] * s[:, :1] + sig[1] * w[:, 1:] * s[:, 1:]), s


def separation(rep, y, margin, alpha=2.0, eps=1e-5, weighted=True):
  dist = torch.sum(rep ** 2, dim=1)
  loss_n = dist[y == 1]
  loss_a = F.relu(1 / (dist[y == -1] + eps) - 1 / margin)
  if weighted:
    wn = torch.clamp(dist ** alpha, 0.33, 3.0)
    wa = torch.clamp((1 / (dist + eps)) ** alpha, 0.33, 3.0)
    loss_n = loss_n * wn[y == 1]
    loss_a = loss_a * wa[y == -1]
  return torch.mean(torch.cat([loss_n, loss_a]))


def margin(rep, y):
  dist = torch.sum(rep ** 2, dim=1)
  bs = dist.shape[0]
  scale = torch.quantile(dist[y == 1], 1.0)
  nd, ad = dist[y == 1] / scale, dist[y == -1] / scale
  a_b, n_b = torch.min(ad), torch.quantile(nd, 1.0)
  return (torch.sum(F.relu(nd - a_b)) + torch.sum(F.relu(n_b - ad))) / bs


def scaling(w, y):
  return torch.mean(math.e - w[y == -1]) + torch.mean(F.relu(w[y == 1] - 1))


def alignment(w):
  return torch.mean(math.e - w)


def consistency(l0, s0, l_list, s_list, anchor, magnitude=1.2, per_row=False):
  """l0 [B,1], s0 [B,2], l_list: 2·anchor tensors [B,1], s_list: 2·anchor tensors [B,2]."""
  sbar0 = s0.mean(1)
  total = 0
  for j in range(anchor):
    ratio = s_list[j].mean(1) / sbar0
    if per_row:
      ratio = ratio[:, None]
    total = total + torch.mean(F.relu(l_list[j] - magnitude * ratio * l0)) / anchor
  for j in range(anchor, 2 * anchor):
    total = total + torch.mean(F.relu(l0 - l_list[j])) / anchor
  return total


def l1(model):
  return sum(torch.sum(torch.abs(m.weight)) for m in model.modules() if type(m) is nn.Linear)
