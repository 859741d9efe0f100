"""PyTorch CPU versions of the reference computations, for timing only (`benchmarks/speed_stages.py`).

Each follows what the reference code runs (algorithms.md sections cited); where references/ already has the PyTorch
version (PointMAE encoder, its FPS loop, the LSPN and the G²SF losses) it is imported, not repeated. Correctness of
our JAX code against those references is the parity tests' job; here only the cost matters.

The reference's DINO ViT is built with timm, which cannot be imported here (it imports torchvision, which cannot
load beside the CPU-only torch wheel), so the ViT-B/8 stand-in is Hugging Face `transformers.ViTModel` with the
DINO configuration: the same architecture and FLOPs (algorithms.md §2.1).
"""
import torch
from transformers import ViTConfig, ViTModel

from references import torch_g2sf
from references import torch_point_mae


def knn_group(points: torch.Tensor, num_group: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
  """PointMAE `Group` on one cloud `points [N, 3]` → (neighborhood [G, K, 3], centers [G, 3]) (algorithms.md §2.2).

  FPS is the pointnet2 loop in torch ops (references/); kNN is brute force `cdist` + `topk(largest=False)`.
  """
  idx = torch_point_mae.fps(points, num_group)
  centers = points[idx]
  nn_idx = torch.cdist(centers, points).topk(group_size, dim=1, largest=False).indices
  return points[nn_idx] - centers[:, None], centers


def point_features_to_grid(points: torch.Tensor, centers: torch.Tensor, feats: torch.Tensor, pixels: torch.Tensor,
                           side: int, grid: int = 56) -> torch.Tensor:
  """Group features `feats [G, C]` at `centers [G, 3]` → IDW onto the valid `points [N, 3]` (3 nearest, weights
  1/(d²+1e-8)) → scattered to their `pixels [N]` of a side² plane → avg_pool2d(3, 1) + adaptive_avg_pool2d(grid)
  (algorithms.md §2.4 steps 1–3) → [C, grid, grid]."""
  d2, idx = (torch.cdist(points, centers) ** 2).topk(3, dim=1, largest=False)
  w = 1.0 / (d2 + 1e-8)
  w = w / w.sum(1, keepdim=True)
  plane = torch.zeros(side * side, feats.shape[1])
  plane[pixels] = (feats[idx] * w[..., None]).sum(1)
  plane = plane.T.reshape(1, -1, side, side)
  pooled = torch.nn.functional.avg_pool2d(plane, 3, 1)
  return torch.nn.functional.adaptive_avg_pool2d(pooled, grid)[0]


def dino_vit(img_size: int = 224, patch_size: int = 8, dim: int = 768, depth: int = 12, heads: int = 12
             ) -> ViTModel:
  """A randomly initialised ViT with the DINO ViT-B/8 configuration (algorithms.md §2.1), eval mode, no pooler."""
  config = ViTConfig(image_size=img_size, patch_size=patch_size, hidden_size=dim, num_hidden_layers=depth,
                     num_attention_heads=heads, intermediate_size=4 * dim, layer_norm_eps=1e-6, qkv_bias=True,
                     hidden_act='gelu', hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  return ViTModel(config, add_pooling_layer=False).eval()


def greedy_coreset(z: torch.Tensor, dist0: torch.Tensor, num_iterations: int, fp16: bool) -> torch.Tensor:
  """The reference greedy k-centre loop (algorithms.md §3.2) for `num_iterations` steps on the projected bank `z [n,
  c]`.

  As in the reference: bank and running minimum cast to float16 (when `fp16`), `torch.linalg.norm` of the full
  difference each step, first argmax, the picked row's minimum zeroed. Returns the picked indices [1+iterations].
  """
  dt = torch.float16 if fp16 else torch.float32
  z = z.to(dt)
  mind = dist0.reshape(-1, 1).to(dt)
  last = z[0:1]
  idx = [torch.tensor(0)]
  for _ in range(num_iterations):
    mind = torch.minimum(mind, torch.linalg.norm(z - last, dim=1, keepdim=True))
    j = torch.argmax(mind)
    idx.append(j)
    mind[j] = 0
    last = z[j:j + 1]
  return torch.stack(idx)


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
  """`cdist` + `topk(k, largest=False)` as the reference scores a sample (algorithms.md §3.3 step 1): (dist, idx) [q,
  k]."""
  return torch.cdist(queries, bank).topk(k, dim=1, largest=False)


class LspnTrainer:
  """One G²SF training step in PyTorch (algorithms.md §4.5c): LSPN forward ×12, the six losses, backward, two Adams.

  Built from references/torch_g2sf (GateNet and the loss functions, reference shapes included: the [B,1] − [B]
  broadcast of L_cns). The coresets `[K_R, D_R]`, `[K_P, D_P]` are fixed; each step takes `feature [B, D_R+D_P]`,
  `anchor_idx [B, 2·num_columns]` (R columns, then P columns) and `normal [B]` bool.
  """

  def __init__(self, coresets: tuple[torch.Tensor, torch.Tensor], mu: torch.Tensor, margin: float,
               hidden: int = 512, emb: int = 128, anchor: int = 5, num_columns: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    self.coresets, self.num_columns = coresets, num_columns
    self.rgb_dim = coresets[0].shape[1]
    dim = self.rgb_dim + coresets[1].shape[1]
    self.model = torch_g2sf.GateNet(dim, hidden, emb).train()  # dropout active, fresh masks per call
    self.theta = torch.nn.Parameter(torch.zeros(2, 1))
    self.opt_model = torch.optim.Adam(self.model.parameters(), lr=1.5e-4, weight_decay=1e-4)
    self.opt_theta = torch.optim.Adam([self.theta], lr=5e-3, weight_decay=1e-4)
    self.mu, self.margin, self.anchor = mu, margin, anchor

  def _noise(self, x: torch.Tensor) -> torch.Tensor:
    """`x += u/‖u‖·r` per modality, u ~ U[0,1)^D, r ~ U[0, 0.1·μ^m) per row (algorithms.md §4.5c.2)."""
    parts = []
    for i, xm in enumerate((x[:, :self.rgb_dim], x[:, self.rgb_dim:])):
      u = torch.rand_like(xm)
      r = torch.rand(x.shape[0], 1) * 0.1 * self.mu[i]
      parts.append(xm + u / u.norm(dim=1, keepdim=True) * r)
    return torch.cat(parts, 1)

  def step(self, feature: torch.Tensor, anchor_idx: torch.Tensor, normal: torch.Tensor) -> float:
    """One optimisation step; returns the total loss."""
    ranks, cols = 2 * self.anchor + 1, self.num_columns
    protos = torch.cat([self.coresets[0][anchor_idx[:, :ranks]],
                        self.coresets[1][anchor_idx[:, cols:cols + ranks]]], -1)  # [B, ranks, D], §4.5c.1
    y = torch.where(normal, 1, -1)
    rgb, b = self.rgb_dim, feature.shape[0]
    f, m0 = self._noise(feature), self._noise(protos[:, 0])
    sig = torch_g2sf.sigma(self.theta)

    def forward(f, m):
      w = self.model(f, m)
      unified, s = torch_g2sf.unified(f, m, w, sig, self.mu, rgb)
      return w, unified, s

    w0, l0, s0 = forward(f, m0)
    h = b // 2
    f_mis = torch.cat([torch.cat([f[:h, :rgb][torch.randperm(h)], f[:h, rgb:][torch.randperm(h)]], 1), f[h:]])
    m_mis = torch.cat([m0[:h], torch.cat([m0[h:, :rgb][torch.randperm(b - h)],
                                          m0[h:, rgb:][torch.randperm(b - h)]], 1)])
    w_mis = self.model(f_mis, m_mis)
    ls, ss = zip(*[forward(f, protos[:, j])[1:] for j in range(1, 2 * self.anchor + 1)])
    loss = (torch_g2sf.separation(l0, y, self.margin) + 10 * torch_g2sf.margin(l0, y)
            + 3 * torch_g2sf.scaling(w0, y) + 20 * torch_g2sf.alignment(w_mis)
            + 40 * torch_g2sf.consistency(l0, s0, list(ls), list(ss), self.anchor)
            + 5e-4 * torch_g2sf.l1(self.model))
    self.opt_model.zero_grad()
    self.opt_theta.zero_grad()
    loss.backward()
    self.opt_model.step()
    self.opt_theta.step()
    return float(loss.detach())
