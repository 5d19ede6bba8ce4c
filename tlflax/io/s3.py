"""Checkpoints on `s3://`: orbax-checkpoint's arrays through tensorstore's own `s3` driver.

orbax-checkpoint (0.12.8, the newest release) builds tensorstore specs for local paths and
`gs://` only: an `s3://` path is normalised to `s3:/` and refused as not absolute
(google/orbax#359; the fix, google/orbax#2739, is not merged). Everything else orbax does on a
store already works on `s3://`: its folder operations go through `etils.epath` (fsspec's `s3fs`),
and `AtomicityOptions(mode=COMMIT_FILE)` marks a finished checkpoint with `commit_success.txt`
instead of renaming a folder (S3 has no rename), as orbax does on `gs://`.

`enable()` adds the missing piece: for `s3://` paths, and for them alone, orbax's spec builder
gives tensorstore `{"driver": "s3", "bucket": ..., "path": ...}`. It wraps three private names of
orbax (`tensorstore_utils._normalize_path`, `tensorstore_utils._use_gcs_driver`,
`gcs_utils.get_kvstore_for_gcs`), delegating every other path to the originals, and checks the
result: an orbax that already writes `s3://` is left alone, and one whose internals moved is a
one-line error rather than a wrong checkpoint.

The endpoint and region come from the standard AWS variables (`AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`, for S3-compatible stores and emulators; `AWS_REGION` or `AWS_DEFAULT_REGION`):
tensorstore reads the credential chain itself but not these. Neither is secret; no credential is
read here or written into a spec.
"""

import os

from tlflax.errors import UserError

_enabled = False


def split(path: str) -> tuple[str, str]:
  """(bucket, key prefix) of `s3://bucket/key...`."""
  bucket, _, key = str(path)[len("s3://"):].partition("/")
  return bucket, key


def kvstore(path: str) -> dict:
  """tensorstore's kvstore spec for an `s3://` path."""
  bucket, key = split(path)
  spec = {"driver": "s3", "bucket": bucket, "path": key}
  endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
  region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
  if endpoint:
    spec["endpoint"] = endpoint
  if region:
    spec["aws_region"] = region
  return spec


def _base_driver(spec) -> str | None:
  """The driver under orbax's OCDBT (or plain) kvstore spec."""
  base = spec.get("base", spec) if isinstance(spec, dict) else spec
  return base.get("driver") if isinstance(base, dict) else None


def _writes_s3(tsu) -> bool:
  probe = "s3://tlflax-probe/checkpoints/1/params"
  try:
    return all(_base_driver(tsu.build_kvstore_tspec(probe, use_ocdbt=ocdbt)) == "s3"
               for ocdbt in (True, False))
  except Exception:  # noqa: BLE001 -- orbax 0.12: "Checkpoint path should be absolute. Got s3:/"
    return False


def enable() -> None:
  """Lets orbax write and read arrays on `s3://` (see the module's docstring). Idempotent."""
  global _enabled
  if _enabled:
    return
  # Private orbax modules, imported only when an s3:// path is used: a release that moves them
  # breaks s3:// alone, with the one line below.
  import orbax.checkpoint
  from orbax.checkpoint._src.path import gcs_utils
  from orbax.checkpoint._src.serialization import tensorstore_utils as tsu
  if not _writes_s3(tsu):
    try:
      normalize, use_driver = tsu._normalize_path, tsu._use_gcs_driver
      for_gcs = gcs_utils.get_kvstore_for_gcs
    except AttributeError as e:
      raise _unsupported(orbax.checkpoint) from e

    def _normalize_path(path: str) -> str:
      return "s3://" + normalize(path[len("s3://"):]).lstrip("/") if path.startswith("s3://") \
          else normalize(path)

    def _use_gcs_driver(directory: str) -> bool:  # "use a store's driver", not GCS's alone
      return directory.startswith("s3://") or use_driver(directory)

    def get_kvstore_for_gcs(path: str) -> dict:
      return kvstore(path) if str(path).startswith("s3://") else for_gcs(path)

    tsu._normalize_path, tsu._use_gcs_driver = _normalize_path, _use_gcs_driver
    gcs_utils.get_kvstore_for_gcs = get_kvstore_for_gcs
    if not _writes_s3(tsu):
      tsu._normalize_path, tsu._use_gcs_driver = normalize, use_driver
      gcs_utils.get_kvstore_for_gcs = for_gcs
      raise _unsupported(orbax.checkpoint)
  _enabled = True


def _unsupported(orbax_checkpoint) -> UserError:
  version = getattr(orbax_checkpoint, "__version__", "?")
  return UserError(f"orbax-checkpoint {version} cannot be taught to write s3:// checkpoints "
                   "(tlflax knows 0.12): pip install 'orbax-checkpoint==0.12.8', or use gs:// or "
                   "a mounted bucket")
