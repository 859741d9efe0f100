"""Exports one class of a finished run as a self-contained bundle for the line (`g2sf_jax.deploy`).

  python -m experiments.export --workdir runs/synthetic --class_name cube --out bundles/cube
  python -m experiments.export --workdir runs/synthetic --class_name cube --method btf --out bundles/cube_btf \
      --platforms cpu,cuda

The bundle holds the scoring programs lowered with `jax.export` for every platform named (default cpu, cuda and
tpu: a bundle made on a CPU runs unchanged on a GPU or a TPU), the arrays they take, the calibration and a manifest
with the SHA-256 of every file. Load it with `g2sf_jax.deploy.Bundle.load(path)`, serve it with
`python -m experiments.serve --bundle path`, check a copy with `python -m experiments.export --verify path`.
An existing `--out` is replaced only if it is a bundle.
"""
import argparse
import sys

from g2sf_jax import detector, distributed, home
from g2sf_jax.deploy import PLATFORMS, verify
from g2sf_jax.deploy.export import export
from g2sf_jax.errors import UserError
from ports import efficientnet_lite0


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(prog='python -m experiments.export', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', help='work directory of a finished experiments.run')
  p.add_argument('--class_name', default='', help='the class to export (optional when the run has one)')
  p.add_argument('--method', default='', help='the method whose run to export (optional when there is one)')
  p.add_argument('--out', help='the bundle folder to write')
  p.add_argument('--platforms', default=','.join(PLATFORMS), help='platforms to lower the programs for')
  p.add_argument('--verify', metavar='BUNDLE', help='only check an existing bundle against its manifest')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.verify:
      found = verify(args.verify)
      print(f'{args.verify}: intact ({len(found["files"])} files; {found["method"]} {found["class_name"]}, '
            f'platforms {", ".join(found["platforms"])})')
      return found
    if not args.workdir or not args.out:
      p.error('--workdir and --out are required (or --verify BUNDLE)')
    distributed.enable_compilation_cache(home.compilation_cache_dir())
    run = detector.Run(args.workdir, args.method or None)
    efficientnet_lite0.ensure_for(run.config)
    platforms = [x.strip() for x in args.platforms.split(',') if x.strip()]
    return export(args.workdir, run.check_class(args.class_name), args.out, run.method, platforms, log=print)
  except UserError as e:
    raise SystemExit(f'error: {e}') from e


if __name__ == '__main__':
  main()
