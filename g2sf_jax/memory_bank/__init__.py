"""PatchCore memory banks (algorithms.md §3), one concept per module:

  normaliser.py  the scalar mean/std normalisation of a bank (§3.1)
  greedy_coreset.py  sparse random projection + the reference's greedy k-centre, sharded over the mesh (§3.2)
  search.py      nearest-neighbour search over a row-sharded bank (§3.3 step 1)
  scoring.py     unimodal scores: re-weighted image score and the pixel map (§3.3 steps 2–3)
  bank.py        one modality's bank built (normalise → coreset → rows) and stored

Full-size banks (765k × 1152 float32 for one MVTec PCD class) are only ever touched in row chunks: nothing of size
n×n or n×k is built. The names below are the package's public interface.
"""
from g2sf_jax.memory_bank.bank import ModalityBank, build, gather_rows, load, save
from g2sf_jax.memory_bank.greedy_coreset import (GREEDY_MODES, GREEDY_TILE, coreset, coreset_size, greedy_k_center,
                                          project, projection_dim, sparse_projection_matrix)
from g2sf_jax.memory_bank.normaliser import Normaliser, row_chunks
from g2sf_jax.memory_bank.scoring import (BLUR_MODES, UnimodalResult, patchcore, pixel_map, score_map,
                                          unimodal_scores, unimodal_scores_batch, upsample_bilinear)
from g2sf_jax.memory_bank.search import QUERY_CHUNK, ShardedBank, bank_rows, knn_search, place_bank

__all__ = ['BLUR_MODES', 'GREEDY_MODES', 'GREEDY_TILE', 'ModalityBank', 'Normaliser', 'QUERY_CHUNK', 'ShardedBank',
           'UnimodalResult', 'bank_rows', 'build', 'coreset', 'coreset_size', 'gather_rows', 'greedy_k_center',
           'knn_search', 'load', 'patchcore', 'pixel_map', 'place_bank', 'project', 'projection_dim', 'row_chunks',
           'save', 'score_map', 'sparse_projection_matrix', 'unimodal_scores', 'unimodal_scores_batch',
           'upsample_bilinear']
