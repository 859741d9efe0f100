"""The tiny synthetic runs that the runner, predict and deployment tests share (fixtures in tests/conftest.py)."""
import shutil

from experiments import runner
from experiments.configs import synthetic

# The tests of the shared runs go to one xdist worker (`--dist loadgroup`), so each run is made once per session.
GROUP = 'finished'


def tiny_config(workdir):
  c = synthetic.get_config()
  c.workdir = str(workdir)
  c.checkpoints.efficientnet_lite0 = str(workdir / 'checkpoints' / 'efficientnet_lite0')
  c.synthetic.classes = 'cube'
  c.synthetic.size = 200
  c.synthetic.n_train = 6
  c.synthetic.n_test = 8
  c.synthesis.num_anomalies = 8
  c.g2sf.epochs = 2
  c.g2sf.batch_size = 40  # below the data's min(0.7·rows // 20) and a multiple of 1, 2, 4 and 8 devices
  c.batch_size = 4
  return c


def method_config(workdir, method: str):
  """`tiny_config` for `method`, with the baselines' training cut to a few steps."""
  c = tiny_config(workdir)
  c.method = method
  c.m3dm.uff.update(steps=4, warmup_steps=1, batch_size=2, accum=1)
  c.m3dm.uff_keep = 'foreground'
  c.cfm.epochs = 2
  return c


def every_method(finished_workdir, shared) -> dict:
  """A copy of the G²SF run with BTF, M3DM and CFM run in it too: {method: its result table}."""
  shutil.copytree(finished_workdir, shared)
  return {m: runner.run(method_config(shared, m)) for m in ('btf', 'm3dm', 'cfm')}
