"""The scoring service: loaded bundles behind an ASGI app (Starlette), batching concurrent scans into one call.

  GET  /health             {"status": "ok", "models": [...], "waiting": {model: scans queued}}
  GET  /model[?model=M]    the bundle's manifest (the only bundle, or M)
  POST /score[?model=M][&threshold=T][&map=png]
       multipart parts with the scan's raw files, as `predict` reads them: `rgb` (PNG) and/or `xyz` (TIFF) for
       MVTec-layout bundles; `depth`, `image`, `info_depth` and `pose` for Eyecandies ones (`RAW_PARTS`).
       → 200 with predict's fields (`scoring.record`: status, label, score, raw_score, threshold, defect_pixels,
       regions, image_scores per row, problems), plus model, class, method and request_id; `map=png` adds the
       anomaly map as a base64 PNG on the fixed scale (`map_png`, 128 = the threshold).

Errors are one JSON line `{"error": ..., "request_id": ...}`: 400 (a part missing, unknown or empty; a bad query
value), 404 (no such model), 413 (the body exceeds `max_upload_bytes`), 415 (a part that is not the file type it
names), 422 (a file that cannot be decoded or preprocessed, or a scan that cannot be scored: the reason), 503 (the
model's queue is full: retry later). A request never takes the process down.

Each model has a bounded queue and one worker: a request is preprocessed in a thread (reading the files, plane
removal, cleaning), queued, and the worker scores what has gathered (up to `max_batch` scans, waiting at most
`max_wait_ms` for more after the first) in one call of `scoring.score_stored`, the function `predict` and the
evaluation use, so the answer equals theirs. Every request is logged with its id, duration and outcome.
"""
import asyncio
import base64
import dataclasses
import io as stdio
import logging
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from g2sf_jax import decisions, io, scoring
from g2sf_jax.deploy.bundle import Bundle
from g2sf_jax.errors import DataError, UserError

log = logging.getLogger('g2sf.serve')

# The multipart parts of one scan per dataset kind: part → (file name the scan's files take, the expected type).
_MVTEC_PARTS = {'rgb': ('scan.png', 'png'), 'xyz': ('scan.tiff', 'tiff')}
RAW_PARTS = {'mvtec3d': _MVTEC_PARTS, 'folder': _MVTEC_PARTS, 'synthetic': _MVTEC_PARTS,
             'eyecandies': {'depth': ('scan_depth.png', 'png'), 'image': ('scan_image_4.png', 'png'),
                            'info_depth': ('scan_info_depth.yaml', 'text'), 'pose': ('scan_pose.txt', 'text')}}
_MAGIC = {'png': (b'\x89PNG\r\n\x1a\n',), 'tiff': (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'), 'text': ()}
_MAX_PARTS = 8  # parts parsed at most: more than any kind takes, so an unknown one is named before the limit
_TYPE_NAMES = {'png': 'a PNG image', 'tiff': 'a TIFF file', 'text': 'a text file'}


class RequestError(Exception):
  """A request the service refuses: HTTP status and a one-line reason."""

  def __init__(self, status: int, message: str, headers: dict | None = None):
    super().__init__(message)
    self.status, self.headers = status, headers or {}


@dataclasses.dataclass(frozen=True)
class Settings:
  max_batch: int = 4              # scans per device call
  max_wait_ms: float = 5.0        # how long the first scan of a batch waits for company
  queue_size: int = 32            # scans waiting per model before 503
  max_upload_bytes: int = 256 << 20
  max_pixels: int = io.MAX_PIXELS


class _Job:
  def __init__(self, stored, name: str, threshold: float):
    self.stored, self.name, self.threshold = stored, name, threshold
    self.done: asyncio.Future = asyncio.get_running_loop().create_future()


class ModelQueue:
  """One bundle, its bounded queue and the worker that scores batches from it."""

  def __init__(self, name: str, bundle: Bundle, settings: Settings):
    self.name, self.bundle, self.settings = name, bundle, settings
    self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.queue_size)
    self.task: asyncio.Task | None = None

  def start(self) -> None:
    self.task = asyncio.get_running_loop().create_task(self._work(), name=f'scoring {self.name}')

  async def submit(self, job: _Job) -> scoring.ScanResult:
    try:
      self.queue.put_nowait(job)
    except asyncio.QueueFull:
      raise RequestError(503, f'model {self.name!r}: {self.queue.maxsize} scans are waiting already; retry later',
                         {'Retry-After': '1'}) from None
    return await job.done

  async def _work(self) -> None:
    while True:
      jobs = [await self.queue.get()]
      deadline = time.monotonic() + self.settings.max_wait_ms / 1000
      while len(jobs) < self.settings.max_batch:
        left = deadline - time.monotonic()
        try:
          jobs.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
          break
      by_threshold: dict[float, list[_Job]] = {}
      for job in jobs:
        by_threshold.setdefault(job.threshold, []).append(job)
      for threshold, group in by_threshold.items():
        try:
          results = await asyncio.to_thread(scoring.score_stored, self.bundle, [j.stored for j in group],
                                            [j.name for j in group], None, threshold)
        except Exception as e:  # noqa: BLE001 (a failed batch answers its requests; the worker goes on)
          log.exception('model %s: scoring a batch of %d failed', self.name, len(group))
          for job in group:
            if not job.done.done():
              job.done.set_exception(RequestError(500, f'scoring failed: {e.__class__.__name__}: {e}'))
          continue
        log.info('model %s: scored a batch of %d', self.name, len(group))
        for job, result in zip(group, results):
          if not job.done.done():
            job.done.set_result(result)


def _check_type(part: str, data: bytes, kind: str) -> None:
  if not data:
    raise RequestError(400, f'part {part!r} is empty')
  magic = _MAGIC[kind]
  if magic and not any(data.startswith(m) for m in magic):
    raise RequestError(415, f'part {part!r}: expected {_TYPE_NAMES[kind]}')


def _preprocess(bundle: Bundle, files: dict[str, bytes], settings: Settings):
  """The uploaded files → the stored scan, read from a private temporary folder exactly as `predict` reads files."""
  parts = RAW_PARTS[bundle.dataset]
  with tempfile.TemporaryDirectory(prefix='g2sf-serve-') as tmp:
    paths = {}
    for part, data in files.items():
      path = Path(tmp) / parts[part][0]
      path.write_bytes(data)
      paths[part] = path
    if bundle.dataset == 'eyecandies':
      entry = bundle.kind.scan_entry(sample=Path(tmp) / 'scan')
    else:
      entry = bundle.kind.scan_entry(**paths)
    try:
      return bundle.kind.load_entry(entry, False, settings.max_pixels, bundle.clean)
    except (DataError, UserError) as e:
      message = str(e)
      for part, path in paths.items():
        message = message.replace(str(path), f'part {part!r}')
      raise RequestError(422, message.replace(tmp + '/', '')) from None


def _query_threshold(request: Request) -> float:
  raw = request.query_params.get('threshold', '0.5')
  try:
    value = float(raw)
  except ValueError:
    value = float('nan')
  if not 0 < value < 1:
    raise RequestError(400, f'query threshold={raw!r}: expected a normalised score in (0, 1), 0.5 being the '
                            'calibrated one')
  return value


def _map_png(decision: decisions.Decision) -> str:
  buffer = stdio.BytesIO()
  Image.fromarray(decisions.map_u8(decision.map)).save(buffer, format='PNG')
  return base64.b64encode(buffer.getvalue()).decode('ascii')


class _BodyLimit:
  """ASGI middleware: a request body over `limit` bytes is answered 413 without being read further."""

  def __init__(self, app, limit: int):
    self.app, self.limit = app, limit

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    declared = dict(scope.get('headers') or []).get(b'content-length')
    if declared is not None and declared.isdigit() and int(declared) > self.limit:
      request_id, message = uuid.uuid4().hex[:12], f'request body of {int(declared)} bytes exceeds the limit of ' \
                                                   f'{self.limit}'
      log.info('request %s %s %s → 413 in 0.0 ms %s', request_id, scope.get('method'), scope.get('path'), message)
      return await _send_json(send, 413, {'error': message, 'request_id': request_id})
    seen = 0

    async def counted():
      nonlocal seen
      message = await receive()
      if message['type'] == 'http.request':
        seen += len(message.get('body', b''))
        if seen > self.limit:
          raise RequestError(413, f'request body exceeds the limit of {self.limit} bytes')
      return message
    return await self.app(scope, counted, send)


async def _send_json(send, status: int, body: dict) -> None:
  data = JSONResponse(body).body
  await send({'type': 'http.response.start', 'status': status,
              'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(data)).encode())]})
  await send({'type': 'http.response.body', 'body': data})


def make_app(bundles: dict[str, Bundle], settings: Settings = Settings()):
  """The ASGI app serving `bundles` ({model name: bundle}); its lifespan starts one worker per model."""
  if not bundles:
    raise ValueError('make_app: no bundles to serve')
  queues = {name: ModelQueue(name, b, settings) for name, b in bundles.items()}

  def pick(request: Request) -> ModelQueue:
    name = request.query_params.get('model')
    if name is None:
      if len(queues) > 1:
        raise RequestError(400, f'several models are served; choose one with ?model= (one of {sorted(queues)})')
      return next(iter(queues.values()))
    if name not in queues:
      raise RequestError(404, f'no model {name!r}; served: {sorted(queues)}')
    return queues[name]

  async def health(request: Request):
    return {'status': 'ok', 'models': sorted(queues), 'waiting': {n: q.queue.qsize() for n, q in queues.items()}}

  async def model(request: Request):
    return pick(request).bundle.manifest

  async def score(request: Request):
    q = pick(request)
    threshold = _query_threshold(request)
    want_map = request.query_params.get('map')
    if want_map not in (None, 'png'):
      raise RequestError(400, f'query map={want_map!r}: expected map=png or none')
    parts = RAW_PARTS[q.bundle.dataset]
    content_type = request.headers.get('content-type', '')
    if not content_type.startswith('multipart/form-data'):
      raise RequestError(415, f'expected a multipart/form-data body with the parts {sorted(parts)}, got '
                              f'{content_type or "no content type"!r}')
    try:
      form = await request.form(max_files=_MAX_PARTS, max_fields=_MAX_PARTS)
    except RequestError:
      raise
    except Exception as e:  # noqa: BLE001 (the parser's own errors are the client's fault)
      raise RequestError(400, f'malformed multipart body: {getattr(e, "detail", None) or e}') from None
    files = {}
    try:
      for key, value in form.multi_items():
        if key not in parts:
          raise RequestError(400, f'unknown part {key!r}; this model takes {sorted(parts)}')
        if key in files:
          raise RequestError(400, f'part {key!r} given twice')
        if isinstance(value, str):
          raise RequestError(400, f'part {key!r}: expected a file upload, got a text field')
        files[key] = await value.read()
        _check_type(key, files[key], parts[key][1])
    finally:
      await form.close()  # the parser's spooled temporary files
    needed = _needed_parts(q.bundle)
    missing = [p for p in needed if p not in files]
    if missing:
      raise RequestError(400, f'missing part {missing[0]!r}: this model needs {", ".join(needed)}')
    stored = await asyncio.to_thread(_preprocess, q.bundle, files, settings)
    result = await q.submit(_Job(stored, 'scan', threshold))
    if result.status != 'ok':
      raise RequestError(422, f'the scan cannot be scored: {result.reason}')
    out = dict(scoring.record(result, q.bundle.main_row), model=q.name, **{'class': q.bundle.class_name},
               method=q.bundle.method)
    if want_map and result.decision is not None:
      out['map_png'] = await asyncio.to_thread(_map_png, result.decision)
    return out

  def endpoint(fn):
    async def handle(request: Request):
      request_id = uuid.uuid4().hex[:12]
      start = time.perf_counter()
      status, outcome = 200, ''
      try:
        body = await fn(request)
        outcome = body.get('label', '') if isinstance(body, dict) else ''
        body = dict(body, request_id=request_id) if fn is score else body
        response = JSONResponse(body)
      except RequestError as e:
        status, outcome = e.status, str(e)
        response = JSONResponse({'error': str(e), 'request_id': request_id}, status_code=e.status, headers=e.headers)
      except Exception as e:  # noqa: BLE001 (one line to the client, the traceback to the log)
        log.exception('request %s failed', request_id)
        status, outcome = 500, f'{e.__class__.__name__}: {e}'
        response = JSONResponse({'error': f'internal error ({e.__class__.__name__}); see the server log',
                                 'request_id': request_id}, status_code=500)
      log.info('request %s %s %s → %d in %.1f ms %s', request_id, request.method, request.url.path, status,
               (time.perf_counter() - start) * 1000, outcome)
      return response
    return handle

  async def lifespan(app):
    for q in queues.values():
      q.start()
    yield
    for q in queues.values():
      q.task.cancel()

  app = Starlette(routes=[Route('/health', endpoint(health)), Route('/model', endpoint(model)),
                          Route('/score', endpoint(score), methods=['POST'])], lifespan=lifespan)
  return _BodyLimit(app, settings.max_upload_bytes)


def _needed_parts(bundle: Bundle) -> list[str]:
  if bundle.dataset == 'eyecandies':
    return list(RAW_PARTS['eyecandies'])
  return [m for m in ('rgb', 'xyz') if m in bundle.data_modalities]
