"""Fields shared by every experiment config; each named config overrides what differs.

Every reference-code quirk is one switch here (SPEC "Fidelity policy"); the default is the reference behaviour.
`experiments.config_check.validate` checks every field before the first stage runs.
"""
import ml_collections
from ml_collections import config_dict

from g2sf_jax import home


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = 'synthetic'          # synthetic | mvtec3d | eyecandies
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
  c.point_mae.batchnorm = 'batch_stats'  # batch_stats (reference, SPEC §2.3) | running_stats
  c.point_mae.drop_path = 'off'          # off (deterministic) | stochastic (reference train mode)

  c.memory_bank = ml_collections.ConfigDict()
  c.memory_bank.coreset_fraction = 0.1
  c.memory_bank.coreset_eps = 0.9
  c.memory_bank.coreset_fp16 = True      # the reference's fp16 greedy distances (SPEC §3.2)
  c.memory_bank.coreset_mode = 'reference'  # reference (differences, as the code) | fast (‖z‖²−2z·zₗ+‖zₗ‖²)
  c.memory_bank.num_anchors = 20

  c.scoring = ml_collections.ConfigDict()
  c.scoring.blur = 'pil_uint8'           # pil_uint8 (reference, SPEC §3.3) | float

  c.synthesis = ml_collections.ConfigDict()
  c.synthesis.num_anomalies = 800
  c.synthesis.num_sources = 8            # anomaly-source clouds per class (Eyecandies: 24)
  c.synthesis.source_classes = ''        # whose clouds: '' = the run's classes (as the reference, on a full run)

  c.g2sf = ml_collections.ConfigDict()
  c.g2sf.hidden = 512
  c.g2sf.emb_dim = 128
  c.g2sf.dropout = 0.5
  c.g2sf.anchor = 5
  c.g2sf.lr = 1.5e-4
  c.g2sf.lr_scale = 5e-3
  c.g2sf.weight_decay = 1e-4
  c.g2sf.epochs = 80
  c.g2sf.batch_size = 8192
  c.g2sf.alpha = 2.0
  c.g2sf.magnitude = 1.2
  c.g2sf.w_margin = 10.0
  c.g2sf.w_consistency = 40.0
  c.g2sf.w_alignment = 20.0
  c.g2sf.w_scaling = 3.0
  c.g2sf.w_l1 = 5e-4
  c.g2sf.consistency = 'reference'       # reference (B×B broadcast, SPEC §4.5c) | per_row
  c.g2sf.scoring_mode = 'min'            # min | max | average | zero

  c.m3dm = ml_collections.ConfigDict()   # M3DM (g2sf_jax/methods/m3dm/): the official code's choices by default
  c.m3dm.normalisation = 'reference'     # reference (every bank: the point bank's mean, the RGB bank's std) | per_bank
  c.m3dm.coreset_sizes = 'reference'     # reference (RGB and fused: fraction × the point coreset) | per_bank
  c.m3dm.uff_pairing = 'reference'       # reference (scrambled RGB/point training pairs) | aligned
  c.m3dm.uff_keep = 'reference'          # reference (no exact zero in the point feature) | foreground (not all 0)
  c.m3dm.uff_classes = ''               # whose training patches train the UFF: '' = the run's classes
  c.m3dm.lambdas = (1.0, 0.1, 1.0)       # DLF input weights: point, RGB, fused
  c.m3dm.ocsvm_nu = 0.5
  c.m3dm.ocsvm_max_iter = 1000
  c.m3dm.uff = ml_collections.ConfigDict()
  c.m3dm.uff.schedule = 'paper'          # paper (steps, warm-up in updates) | code (epochs, warm-up over 1 epoch)
  c.m3dm.uff.steps = 750                 # paper: 750 updates ...
  c.m3dm.uff.warmup_steps = 250          # ... the first 250 warming up from 0
  c.m3dm.uff.epochs = 3                  # code schedule
  c.m3dm.uff.warmup_epochs = 1           # code schedule
  c.m3dm.uff.lr = 0.003
  c.m3dm.uff.betas = (0.9, 0.95)
  c.m3dm.uff.weight_decay = 0.01         # torch's AdamW default: the script ignores --weight_decay
  c.m3dm.uff.batch_size = 16             # samples per contrastive batch (every kept patch of them is a negative)
  c.m3dm.uff.accum = 16                  # contrastive batches per update (16 × 16 = 256 samples)
  c.m3dm.uff.temperature = 1.0

  c.cfm = ml_collections.ConfigDict()    # CFM (g2sf_jax/methods/cfm/): the official code's choices by default
  c.cfm.epochs = 50
  c.cfm.batch_size = 4                   # training images per batch
  c.cfm.lr = 1e-3
  c.cfm.distance = 'euclid'              # euclid (the code: ‖n(pred) − n(obs)‖) | cosine (1 − cos)
  c.cfm.normalisation = 'reference'      # reference (the code's three per-image normalisations) | none
  c.cfm.cache_gb = 4.0                   # hold the training set's 224² point features in memory up to this size

  c.metrics = ml_collections.ConfigDict()
  c.metrics.aupro_thresholds = config_dict.FieldReference(100, field_type=object)  # int, or 'exact': the full curve
  c.metrics.aupro_limits = (0.3, 0.1, 0.05, 0.01)

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.classes = 'cube,cylinder,torus'
  c.synthetic.n_train = 16
  c.synthetic.n_test = 42
  c.synthetic.size = 320
  c.synthetic.fov = 0.32                # metres across the view: 0.32 frames the object small, 0.16 as MVTec does
  c.synthetic.modalities = 'rgb+xyz'    # which files to generate: rgb+xyz | rgb | xyz
  return c
