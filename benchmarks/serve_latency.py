"""What a line sees: the scoring service against `experiments.predict`, cold and warm, on one trained class.

  python -m benchmarks.serve_latency [--workdir runs/synthetic] [--class_name cube] [--method g2sf] \
      [--requests 32] [--clients 1,4,16] [--sizes 320,400] [--out runs/serve_latency.md]

Exports the class to a bundle, then measures, one after another (nothing else should run meanwhile):
  cold start   process start → first answer: the service (`experiments.serve`, then one POST /score) and
               `python -m experiments.predict` on one scan, each with an empty and with a warm compilation cache
  warm         the running service: latency per scan (p50, p95) and throughput at each number of concurrent clients
               (each client posts its next scan when the last is answered); `predict` per call (a new process per
               scan, warm cache) and per scan in its batch mode (`--scans` over `--requests` scans)
for scans of each side in `--sizes` (the synthetic generator's scans of the class at that size; 400 is MVTec
3D-AD's typical scan). A last table splits one warm scan's time into its parts (file reading and preprocessing,
backbones, scorer, decision) to say what bounds the latency.
"""
import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _scans(root: Path, class_name: str, size: int, count: int, seed: int) -> list[tuple[Path, Path]]:
  """`count` test scans of `class_name` generated at `size`×`size` (good and defective alike)."""
  from g2sf_jax.data import synthetic
  out = root / f'scans_{size}'
  if not out.exists():
    synthetic.generate(out, [class_name], n_train=1, n_test=max(count, 2), size=size, seed=seed)
  rgb = sorted((out / class_name / 'test').glob('*/rgb/*.png'))[:count]
  return [(p, p.parent.parent / 'xyz' / (p.stem + '.tiff')) for p in rgb]


class Server:
  """`experiments.serve` as a child process."""

  def __init__(self, bundle: Path, home: Path, max_batch: int, log: Path):
    self.port = _port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.start = time.perf_counter()
    env = dict(os.environ, G2SF_HOME=str(home))
    with open(log, 'w') as err:
      self.proc = subprocess.Popen([sys.executable, '-m', 'experiments.serve', '--bundle', str(bundle), '--port',
                                    str(self.port), '--max_batch', str(max_batch), '--queue', '256'],
                                   cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)

  def first_answer(self, scan) -> float:
    """Seconds from process start to the first scored answer."""
    import httpx
    while True:
      try:
        if httpx.get(self.url + '/health', timeout=5).status_code == 200:
          break
      except httpx.TransportError:
        if self.proc.poll() is not None:
          raise SystemExit('the server exited; see its log')
        time.sleep(0.05)
    post(self.url, scan)
    return time.perf_counter() - self.start

  def stop(self) -> None:
    self.proc.terminate()
    self.proc.wait(timeout=60)


def post(url: str, scan) -> float:
  import httpx
  rgb, xyz = scan
  start = time.perf_counter()
  answer = httpx.post(url + '/score', files={'rgb': rgb.read_bytes(), 'xyz': xyz.read_bytes()}, timeout=600)
  if answer.status_code != 200:
    raise SystemExit(f'POST /score answered {answer.status_code}: {answer.text}')
  return time.perf_counter() - start


def _predict(workdir: str, class_name: str, method: str, home: Path, args: list[str], out: Path) -> float:
  env = dict(os.environ, G2SF_HOME=str(home))
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'experiments.predict', '--workdir', workdir, '--class_name', class_name,
                  '--method', method, *args, '--out', str(out)], cwd=REPO, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def warm(url: str, scans: list, clients: int, requests: int) -> dict:
  """Latency p50/p95 and throughput with `clients` concurrent clients posting `requests` scans in all."""
  order = [scans[i % len(scans)] for i in range(requests)]
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    latencies = sorted(pool.map(lambda s: post(url, s), order))
  wall = time.perf_counter() - start
  return {'p50': statistics.median(latencies), 'p95': latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
          'per_s': requests / wall}


def parts(bundle_path: Path, scan, repeats: int = 5) -> dict[str, float]:
  """Median seconds of one warm scan's parts, in this process."""
  import jax
  from g2sf_jax import scoring
  from g2sf_jax.data import transforms
  from g2sf_jax.deploy import Bundle
  b = Bundle.load(bundle_path, batch_size=1)
  entry = b.kind.scan_entry(rgb=scan[0], xyz=scan[1])
  times: dict[str, list[float]] = {}

  def timed(name, fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.setdefault(name, []).append(time.perf_counter() - start)
    return out
  for _ in range(repeats + 1):
    stored = timed('read + preprocess', lambda: b.kind.load_entry(entry, False, clean=b.clean))
    sample = transforms.model_input({m: getattr(stored, m) for m in b.data_modalities}, b.kind.mask_rgb_by_xyz)
    feats = {}
    if b.rgb_backbone is not None and 'img' in b.needs:
      feats.update(timed('rgb backbone', lambda: b.features([sample], ['img'])))
    point_kinds = [k for k in b.needs if k != 'img']
    if point_kinds:
      feats.update(timed('point backbone', lambda: b.features([sample], point_kinds)))
    timed('scorer', lambda: b.scores(feats))
    timed('all (score_stored)', lambda: scoring.score_stored(b, [stored], ['scan']))
  return {k: statistics.median(v[1:]) for k, v in times.items()}


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', default='runs/synthetic')
  p.add_argument('--class_name', default='cube')
  p.add_argument('--method', default='g2sf')
  p.add_argument('--requests', type=int, default=32)
  p.add_argument('--clients', default='1,4,16')
  p.add_argument('--sizes', default='320,400')
  p.add_argument('--max_batch', type=int, default=4)
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  clients = [int(c) for c in args.clients.split(',')]
  sizes = [int(s) for s in args.sizes.split(',')]
  from g2sf_jax.deploy.export import export
  with tempfile.TemporaryDirectory(prefix='g2sf-serve-bench-') as tmp:
    root = Path(tmp)
    bundle = root / 'bundle'
    start = time.perf_counter()
    export(args.workdir, args.class_name, bundle, args.method)
    exported = time.perf_counter() - start
    lines = [f'python -m benchmarks.serve_latency --workdir {args.workdir} --class_name {args.class_name} --method '
             f'{args.method} --requests {args.requests} --clients {args.clients} --sizes {args.sizes} --max_batch '
             f'{args.max_batch}', '', f'Export (cpu, cuda, tpu): {exported:.1f} s', '']
    cold_rows, warm_rows, part_rows = [], [], []
    for size in sizes:
      scans = _scans(root, args.class_name, size, args.requests, seed=1)
      cold = {}
      for cache in ('empty', 'warm'):  # the first pass fills the cache the second one finds
        home = root / f'home_{size}'
        if cache == 'empty':
          home.mkdir()
        server = Server(bundle, home, args.max_batch, root / f'serve_{size}_{cache}.log')
        try:
          cold[f'serve {cache}'] = server.first_answer(scans[0])
          if cache == 'warm':
            post(server.url, scans[1])
            for c in clients:
              warm_rows.append((size, f'service, {c} client{"s" if c > 1 else ""}', warm(server.url, scans, c,
                                                                                          args.requests)))
        finally:
          server.stop()
      home = root / f'predict_home_{size}'
      home.mkdir()
      rgb, xyz = scans[0]
      for cache in ('empty', 'warm'):  # the first call fills the cache the second one finds
        cold[f'predict {cache}'] = _predict(args.workdir, args.class_name, args.method, home,
                                            ['--rgb', str(rgb), '--xyz', str(xyz)], root / 'one.png')
      cold_rows.append((size, cold))
      per_call = [_predict(args.workdir, args.class_name, args.method, home, ['--rgb', str(r), '--xyz', str(x)],
                           root / 'one.png') for r, x in scans[:3]]
      warm_rows.append((size, 'predict, one process per scan',
                        {'p50': statistics.median(per_call), 'p95': max(per_call),
                         'per_s': 1 / statistics.mean(per_call)}))
      folder = scans[0][0].parent.parent.parent
      batch = _predict(args.workdir, args.class_name, args.method, home, ['--scans', *map(str, folder.iterdir())],
                       root / 'many')
      count = sum(1 for _ in folder.glob('*/rgb/*.png'))
      warm_rows.append((size, f'predict --scans ({count} scans, one process)',
                        {'p50': batch / count, 'p95': None, 'per_s': count / batch}))
      part_rows.append((size, parts(bundle, scans[1])))
  fmt = lambda v: '—' if v is None else f'{v:.3f}'
  lines += ['Cold start: process start → first answer (s)', '', '| Scan | service, empty cache | service, warm cache | '
            'predict, empty cache | predict, warm cache |', '|---|---|---|---|---|']
  for size, cold in cold_rows:
    lines.append(f'| {size}×{size} | ' + ' | '.join(fmt(cold[k]) for k in ('serve empty', 'serve warm',
                                                                            'predict empty', 'predict warm')) + ' |')
  lines += ['', 'Warm: seconds per scan (p50, p95) and scans per second', '', '| Scan | How | p50 | p95 | scans/s |',
            '|---|---|---|---|---|']
  for size, how, m in warm_rows:
    lines.append(f'| {size}×{size} | {how} | {fmt(m["p50"])} | {fmt(m["p95"])} | {m["per_s"]:.2f} |')
  names = list(dict.fromkeys(k for _, part in part_rows for k in part))
  lines += ['', 'One warm scan, by part (s, median of 5, in one process)', '',
            '| Scan | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for size, part in part_rows:
    lines.append(f'| {size}×{size} | ' + ' | '.join(fmt(part.get(n)) for n in names) + ' |')
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    Path(args.out).write_text(text)
  return text


if __name__ == '__main__':
  main()
