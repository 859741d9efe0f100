"""Open3D's DBSCAN and RANSAC plane fit, called as the reference preprocessing calls them (algorithms.md §1.2): the
oracle for the NumPy versions in `g2sf_jax.data.dbscan` and `g2sf_jax.data.plane`."""
import numpy as np
import open3d as o3d


def cluster_dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
  cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
  return np.asarray(cloud.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False))


def segment_plane(points: np.ndarray, distance_threshold: float, ransac_n: int, num_iterations: int,
                  seed: int) -> np.ndarray:
  o3d.utility.random.seed(seed)
  cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
  model, _ = cloud.segment_plane(distance_threshold=distance_threshold, ransac_n=ransac_n,
                                 num_iterations=num_iterations)
  return np.asarray(model, np.float64)
