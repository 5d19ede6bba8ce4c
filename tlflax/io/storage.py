"""Where files live: local folders and object stores (`gs://`, `s3://`) behind one set of
functions, on `etils.epath` (what orbax itself uses) with fsspec's `gcsfs` and `s3fs` for the
stores (the `gcs` and `s3` extras). Paths stay strings; every read and write
of a workdir goes through here, never through `open` or `os` on a string.

Object stores have no rename and no append. What that changes, and how it is handled:
- `write_text` / `write_bytes` are atomic everywhere: locally a temporary file renamed over the
  target; on a store one upload, which readers see whole or not at all (a store's object is
  replaced atomically).
- `append_text` on a store rewrites the object with the line added (metrics files are small).
- `move` on a store is a copy then a delete: not atomic; tlflax uses it only to set a corrupt
  checkpoint aside.
- orbax writes checkpoints to stores itself (tensorstore; on s3:// with the help of `s3.py`),
  marking a finished one with `commit_success.txt` instead of renaming a temporary folder.
Credentials are the store's own (Application Default Credentials for gs://, the AWS chain for
s3://); tlflax reads and logs none of them.
"""

import contextlib
import fnmatch
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator

from tlflax.errors import UserError

# epath serves gs:// and s3:// through TensorFlow's gfile when TensorFlow is importable (it is, to
# prepare tfds datasets), which has no S3 and ignores storage emulators; fsspec has both.
os.environ.setdefault("EPATH_USE_TF", "false")

REMOTE = ("gs://", "s3://")
_EXTRAS = {"gs://": ("gcsfs", "gcs"), "s3://": ("s3fs", "s3")}


def is_remote(path: str) -> bool:
  return str(path).startswith(REMOTE)


def epath(path: str):
  """`path` as an `etils.epath.Path`."""
  from etils import epath as epath_lib  # lazily: after EPATH_USE_TF above, on the first path
  return epath_lib.Path(path)


def check(path: str, what: str = "--workdir") -> None:
  """A `UserError` when `path` is on a store whose fsspec package is missing, or in a bucket that
  cannot be seen: tlflax never creates a bucket (fsspec's mkdir would)."""

  for prefix, (package, extra) in _EXTRAS.items():
    if str(path).startswith(prefix) and importlib.util.find_spec(package) is None:
      raise UserError(f"{what}={path} needs {package}: install the {extra} extra, pip install -e "
                      f"'.[{extra}]' in the tlflax checkout")
  if not is_remote(path):
    return
  scheme, _, rest = str(path).partition("://")
  bucket = f"{scheme}://{rest.split('/')[0]}"
  try:
    seen = epath(bucket).exists()
  except Exception as e:
    raise UserError(f"{what}={path}: cannot reach {bucket} ({type(e).__name__}): check the "
                    "store's credentials and endpoint") from e
  if not seen:
    raise UserError(f"{what}={path}: no bucket {bucket} can be seen with these credentials and "
                    "endpoint: create it first (tlflax creates no bucket), or check them")


def absolute(path: str) -> str:
  """A local path made absolute (user folder expanded); a store's path as it is."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(*parts: str) -> str:
  return os.path.join(*[str(p) for p in parts])


def exists(path: str) -> bool:
  return os.path.exists(path) if not is_remote(path) else epath(path).exists()


def isdir(path: str) -> bool:
  return os.path.isdir(path) if not is_remote(path) else epath(path).is_dir()


def listdir(path: str) -> list[str]:
  """The names in a folder ([] when there is none)."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  p = epath(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def glob(folder: str, pattern: str) -> list[str]:
  """Paths in `folder` whose names match `pattern`."""
  return [join(folder, n) for n in listdir(folder) if fnmatch.fnmatch(n, pattern)]


def makedirs(path: str) -> None:
  """Creates a folder and its parents (on a store: nothing to create, folders are prefixes)."""
  if is_remote(path):
    epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str | None:
  """The file's text, or None when there is no such file."""
  if not is_remote(path):
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      return f.read()
  p = epath(path)
  return p.read_text() if p.is_file() else None


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  return epath(path).read_bytes()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` whole, atomically (see the module's docstring)."""
  if is_remote(path):
    epath(path).write_bytes(data)
    return
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def append_text(path: str, text: str) -> None:
  """Adds `text` at the end of `path` (created if missing); on a store, a rewrite."""
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  write_text(path, (read_text(path) or "") + text)


def remove(path: str) -> None:
  """Deletes a file if it exists."""
  if is_remote(path):
    p = epath(path)
    if p.exists():
      p.unlink()
  elif os.path.exists(path):
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a folder and everything in it, if it exists."""
  if is_remote(path):
    p = epath(path)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def rmdir_if_empty(path: str) -> bool:
  """Removes an empty local folder (a store has no empty folders); False when it is not empty."""
  if is_remote(path):
    return not listdir(path)
  try:
    os.rmdir(path)
    return True
  except OSError:
    return False


def move(src: str, dst: str) -> None:
  """Moves a folder or file: a rename locally; on a store a copy then a delete (not atomic)."""
  if not is_remote(src):
    os.replace(src, dst)
    return
  s, d = epath(src), epath(dst)
  if s.is_dir():
    for child in _files(s):
      child.copy(d / child.relative_to(s), overwrite=True)
    s.rmtree()
  else:
    s.copy(d, overwrite=True)
    s.unlink()


def _files(folder) -> Iterator:
  """Every file under an epath folder (a store's glob refuses `**`)."""
  for child in folder.iterdir():
    if child.is_dir():
      yield from _files(child)
    else:
      yield child


@contextlib.contextmanager
def local_folder(path: str) -> Iterator[str]:
  """A local folder to write `path`'s files into, for libraries that write only to local files
  (TensorFlow's SavedModel writer here): `path` itself when it is local; on a store a temporary
  folder whose files are uploaded to `path` at the end of the block."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="tlflax-upload-") as tmp:
    yield tmp
    upload(tmp, path)


def upload(local: str, remote: str) -> None:
  """Copies the files of a local folder into `remote` (a store's folder), tree and names kept."""
  for root, _, files in os.walk(local):
    for name in files:
      full = os.path.join(root, name)
      write_bytes(join(remote, os.path.relpath(full, local)), read_bytes(full))
