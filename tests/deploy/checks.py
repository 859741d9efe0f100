"""The check every bundle test makes: a bundle scores raw files exactly as `predict` does on its work directory."""
import numpy as np

from experiments import predict
from g2sf_jax import decisions, io, scoring
from g2sf_jax.deploy import Bundle
from g2sf_jax.deploy.export import export


def bundle_equals_predict(workdir, method, out, scans, tmp_path) -> Bundle:
  """Exports `method`'s class cube from `workdir` to `out`, then scores each scan (a dict of rgb=/xyz= paths) with
  the loaded bundle and with `predict`: every field of the JSON and the written map must be equal."""
  export(workdir, 'cube', out, method)
  bundle = Bundle.load(out)
  for i, files in enumerate(scans):
    flags = [arg for m, path in files.items() for arg in (f'--{m}', str(path))]
    want = predict.main(['--workdir', str(workdir), '--method', method, *flags, '--out', str(tmp_path / f'{i}.png')])
    got = bundle.score_files(**files)
    record = scoring.record(got, bundle.main_row)
    assert record == {k: want[k] for k in record}, (method, files)
    assert np.array_equal(decisions.map_u8(got.decision.map), io.read_mask_png(tmp_path / f'{i}.png')), method
  return bundle
