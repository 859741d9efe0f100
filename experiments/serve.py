"""Serves exported bundles over HTTP (`g2sf_jax.deploy.service`): POST /score, GET /health, GET /model.

  python -m experiments.serve --bundle bundles/cube [--host 127.0.0.1] [--port 8000]
  python -m experiments.serve --bundle cube=bundles/cube --bundle torus=bundles/torus --max_batch 8

  curl -F rgb=@scan.png -F xyz=@scan.tiff http://127.0.0.1:8000/score
  curl -F rgb=@scan.png -F xyz=@scan.tiff 'http://127.0.0.1:8000/score?model=torus&map=png'

Each `--bundle` is verified and loaded once, its RGB backbone and scorer compiled for every batch size up to
`--max_batch` before the port opens (a PointMAE bundle compiles each cloud-size bucket on its first scan; compiled
programs are kept in JAX's persistent cache, `$G2SF_HOME/jax_cache`, so a restart is
quick); a model is named by `NAME=` or else by its class. Concurrent requests for a model are scored together, up
to `--max_batch` scans per call, the first waiting at most `--max_wait_ms` for others; at most `--queue` scans wait
per model, and a request beyond that is answered 503. One log line per request: its id, duration and outcome.
"""
import argparse
import logging
import sys

from g2sf_jax import distributed, home
from g2sf_jax.deploy import Bundle
from g2sf_jax.deploy.service import Settings, make_app
from g2sf_jax.errors import UserError

log = logging.getLogger('g2sf.serve')


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m experiments.serve', description=__doc__.split('\n')[0])
  p.add_argument('--bundle', action='append', required=True, metavar='[NAME=]PATH', help='a bundle to serve')
  p.add_argument('--host', default='127.0.0.1')
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--max_batch', type=int, default=4, help='scans scored in one call')
  p.add_argument('--max_wait_ms', type=float, default=5.0, help='how long a scan waits for others to batch with')
  p.add_argument('--queue', type=int, default=32, help='scans that may wait per model before requests get 503')
  p.add_argument('--max_upload_mb', type=float, default=256, help='the largest request body accepted')
  args = p.parse_args(argv)
  for flag, value, least in (('--max_batch', args.max_batch, 1), ('--queue', args.queue, 1),
                             ('--max_wait_ms', args.max_wait_ms, 0), ('--max_upload_mb', args.max_upload_mb, 0.001)):
    if not value >= least:
      p.error(f'{flag} {value}: expected at least {least}')
  return args


def bundle_spec(spec: str) -> tuple[str, str]:
  """`[NAME=]PATH` → (NAME or '', PATH); a PATH alone may hold an '=' below a folder (`/data/run=3/bundle`)."""
  name, sep, path = spec.partition('=')
  return (name, path) if sep and '/' not in name else ('', spec)


def load(specs: list[str], max_batch: int) -> dict[str, Bundle]:
  """`[NAME=]PATH` values → {name: loaded and warmed-up bundle}."""
  bundles = {}
  for spec in specs:
    name, path = bundle_spec(spec)
    bundle = Bundle.load(path, batch_size=max_batch)
    name = name or bundle.class_name
    if name in bundles:
      raise UserError(f'--bundle {spec}: a second model named {name!r}; name them --bundle NAME=PATH')
    log.info('model %s: %s %s from %s; compiling for batches up to %d', name, bundle.method, bundle.class_name, path,
             max_batch)
    bundle.warm_up()
    bundles[name] = bundle
  return bundles


def main(argv: list[str] | None = None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
  distributed.enable_compilation_cache(home.compilation_cache_dir())
  try:
    bundles = load(args.bundle, args.max_batch)
  except UserError as e:
    raise SystemExit(f'error: {e}') from e
  import uvicorn
  settings = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue,
                      max_upload_bytes=int(args.max_upload_mb * 2**20))
  uvicorn.run(make_app(bundles, settings), host=args.host, port=args.port, log_level='warning')


if __name__ == '__main__':
  main()
