"""Fields shared by every experiment config; each named config overrides what differs.

Every reference-code quirk is one switch here (algorithms.md "Fidelity policy"); the default is the reference behaviour.
`experiments.config_check.validate` checks every field before the first stage runs.
"""
import ml_collections
from ml_collections import config_dict

from g2sf_jax import home, io
from g2sf_jax.methods.cfm import defaults as cfm_defaults
from g2sf_jax.methods.g2sf import defaults as g2sf_defaults
from g2sf_jax.methods.m3dm import defaults as m3dm_defaults
from g2sf_jax.methods.patchcore import defaults as patchcore_defaults


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = 'synthetic'          # synthetic | mvtec3d | eyecandies | folder (your own parts, g2sf_jax/data/folder.py)
  c.raw_dir = ''                   # the user's extracted download (read only); synthetic: generated here
  c.workdir = 'runs/synthetic'     # every stage's output, cached and resumable
  c.classes = ''                   # comma-separated subset; empty = every class of the dataset
  c.stages = 'all'                 # all, or some of: prepare,extract,<the method's stages>,evaluate
  c.seed = 0
  c.method = 'g2sf'                # a g2sf_jax.methods name: g2sf | btf | m3dm | cfm | patchcore (IMG/PCD rows)
  c.modalities = 'rgb+xyz'         # rgb+xyz | rgb | xyz
  c.rgb_backbone = 'dino_vit_b8'   # dino_vit_b8 | efficientnet_lite0
  c.point_backbone = 'point_mae'   # point_mae | fpfh
  c.batch_size = 8                 # feature extraction batch
  c.max_pixels = io.MAX_PIXELS     # a raw image or cloud declaring more pixels is refused before it is decoded
  c.clean_scans = True             # MVTec 3D-AD's cloud cleaning (plane, padding, largest cluster); False: padding only
  c.unit_mm = 1000.0               # one xyz unit in millimetres (MVTec 3D-AD and the synthetic set: metres), for areas

  c.train = ml_collections.ConfigDict()
  c.train.max_samples = 0          # train on a seeded subset of this many good scans per class; 0 = all

  # Thresholds per class and row, fitted on scans the method did not train on (g2sf_jax/calibration.py).
  c.calibration = ml_collections.ConfigDict()
  c.calibration.rule = 'auto'      # auto | good_quantile | f1 (auto: f1 when validation has defective scans)
  c.calibration.quantile = 0.99    # good_quantile: the quantile of the good scans' scores …
  c.calibration.margin = 0.1       # … raised by this fraction of its distance from their median
  c.calibration.holdout = 0.2      # a class without validation/: this part of train/good is held out (seeded)
  c.workers = 0                    # processes for the CPU data work (rendering, cleaning, synthesis); 0 = one per
                                   # core. Keys no stage: the results are the same for any number (g2sf_jax/parallel.py)

  # Several cooperating processes (jax.distributed; README "Many devices and hosts"). All empty: one process, or
  # JAX's cluster detection when SLURM / Open MPI / a TPU pod started more than one task. Keys no stage.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ''     # host:port of process 0, reachable from every process
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.heartbeat_timeout_s = 100  # the others stop this long after one process died

  c.checkpoints = ml_collections.ConfigDict()
  # Converted weights live under $G2SF_HOME (default ~/.cache/g2sf-jax), whatever the current directory.
  for name in ('dino_vit_b8', 'point_mae', 'efficientnet_lite0'):
    c.checkpoints[name] = str(home.checkpoint_dir(name))

  c.fpfh = ml_collections.ConfigDict()   # the `fpfh` point backbone (g2sf_jax/fpfh.py: FpfhParams)
  c.fpfh.normal_radius = 3.0             # in point spacings
  c.fpfh.normal_max_nn = 30
  c.fpfh.feature_radius = 6.0            # in point spacings
  c.fpfh.feature_max_nn = 100
  c.fpfh.spacing = config_dict.placeholder(float)  # data units; None = each cloud's median NN distance
  c.fpfh.orient_to_camera = True
  c.fpfh.scale = 11 / 200

  c.point_mae = ml_collections.ConfigDict()
  c.point_mae.num_group = 512      # G2SF; M3DM uses 1024
  c.point_mae.group_size = 128
  c.point_mae.batchnorm = 'batch_stats'  # batch_stats (reference, algorithms.md §2.3) | running_stats
  c.point_mae.drop_path = 'off'          # off (deterministic) | stochastic (reference train mode)

  c.memory_bank = patchcore_defaults.get_config()

  c.scoring = ml_collections.ConfigDict()
  c.scoring.blur = 'pil_uint8'           # pil_uint8 (reference, algorithms.md §3.3) | float

  c.synthesis = g2sf_defaults.synthesis_config()
  c.g2sf = g2sf_defaults.g2sf_config()
  c.m3dm = m3dm_defaults.get_config()
  c.cfm = cfm_defaults.get_config()

  c.metrics = ml_collections.ConfigDict()
  # an int, 'exact' (the full curve), or 0: the method's reference (CFM's code 99, the others 100)
  c.metrics.aupro_thresholds = config_dict.FieldReference(0, field_type=object)
  c.metrics.aupro_limits = (0.3, 0.1, 0.05, 0.01)

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.classes = 'cube,cylinder,torus'
  c.synthetic.n_train = 16
  c.synthetic.n_test = 42
  c.synthetic.size = 320
  c.synthetic.fov = 0.32                # metres across the view: 0.32 frames the object small, 0.16 as MVTec does
  c.synthetic.modalities = 'rgb+xyz'    # which files to generate: rgb+xyz | rgb | xyz
  return c
