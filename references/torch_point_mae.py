"""PyTorch reference of the Point-MAE encoder as M3DM/G²SF run it (algorithms.md §2.2, §2.3), written for the parity
tests.

Module names follow Point-MAE's, so `state_dict()` has the official keys (`encoder.first_conv.0.weight`,
`blocks.blocks.3.attn.qkv.weight`, …). `forward` takes one cloud at a time, as the reference does (batch size 1), so
BatchNorm in train mode normalises with that cloud's statistics over all G×K positions.
"""
import torch
from torch import nn


def fps(points: torch.Tensor, num_samples: int) -> torch.Tensor:
  """pointnet2_ops semantics: start 0, running min squared distance from 1e10, skip |p|² <= 1e-3, first argmax."""
  p = points.float()
  eligible = (p * p).sum(-1) > 1e-3
  running = torch.full((len(p),), 1e10)
  idx = [0]
  for _ in range(1, num_samples):
    d = p - p[idx[-1]]
    d = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
    running = torch.where(eligible, torch.minimum(d, running), running)
    idx.append(int(torch.argmax(torch.where(eligible, running, torch.tensor(-1.0)))))
  return torch.tensor(idx)


def group(points: torch.Tensor, num_group: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """Returns (neighborhood [G, K, 3], centers [G, 3], centre indices [G]); kNN by brute force, centre included."""
  idx = fps(points, num_group)
  centers = points[idx]
  d2 = ((points[None] - centers[:, None]) ** 2).sum(-1)
  nn_idx = torch.sort(d2, dim=1, stable=True).indices[:, :group_size]
  return points[nn_idx] - centers[:, None], centers, idx


class Encoder(nn.Module):
  def __init__(self, encoder_channel: int = 384):
    super().__init__()
    self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                    nn.Conv1d(128, 256, 1))
    self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                     nn.Conv1d(512, encoder_channel, 1))

  def forward(self, groups: torch.Tensor) -> torch.Tensor:  # [G, K, 3] -> [G, C]
    x = groups.transpose(1, 2)                       # [G, 3, K]
    a = self.first_conv(x)                           # [G, 256, K]
    g = a.max(dim=2, keepdim=True).values
    x = torch.cat([g.expand(-1, -1, a.shape[2]), a], dim=1)
    return self.second_conv(x).max(dim=2).values


class Attention(nn.Module):
  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    n, d = x.shape
    q, k, v = self.qkv(x).reshape(n, 3, self.heads, d // self.heads).permute(1, 2, 0, 3)
    attn = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
    return self.proj((attn @ v).transpose(0, 1).reshape(n, d))


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
    self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
  def __init__(self, dim: int, depth: int, heads: int, hidden: int):
    super().__init__()
    self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])


class PointMAEEncoder(nn.Module):
  """DropPath off (deterministic); call `.train()` for batch-stat BN (the reference), `.eval()` for running stats."""

  def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, out_blocks=(3, 7, 11)):
    super().__init__()
    self.out_blocks = out_blocks
    self.encoder = Encoder(dim)
    self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
    self.blocks = TransformerEncoder(dim, depth, heads, 4 * dim)
    self.norm = nn.LayerNorm(dim)

  def forward(self, neighborhood: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:  # -> [G, 1152]
    x = self.encoder(neighborhood)
    pos = self.pos_embed(centers)
    outs = []
    for i, block in enumerate(self.blocks.blocks):
      x = block(x + pos)
      if i in self.out_blocks:
        outs.append(self.norm(x))
    return torch.cat(outs, dim=-1)


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Non-trivial weights everywhere, including LayerNorm/BN affine and BN running statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      if name.endswith('running_var'):
        t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
      elif 'norm' in name or name.endswith(('1.weight', '1.bias')) and 'conv' in name:
        base = 1.0 if name.endswith('weight') else 0.0
        t.copy_(base + 0.2 * torch.randn(t.shape, generator=gen))
      else:
        t.copy_(torch.randn(t.shape, generator=gen) * (t[0].numel() if t.ndim > 1 else 16) ** -0.5)
  return model
