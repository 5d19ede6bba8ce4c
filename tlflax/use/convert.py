"""Export a tlflax model to PyTorch: `python -m tlflax.use.convert --to=torchvision --in=PATH
--out=model.safetensors`.

PATH is whatever `tlflax.load` takes. The file holds a torchvision-layout state dict (with the
BatchNorms' `num_batches_tracked`) and, as metadata, the tlflax model name, width, image size,
input mean and std and class names. In PyTorch:

    import safetensors.torch, torchvision
    model = torchvision.models.resnet50(num_classes=N)       # the *_imagenet models
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

tlflax's CIFAR ResNets (3x3 stride-1 stem, no max-pool) load into torchvision's ResNet once its
stem is made the same: `model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False);
model.maxpool = torch.nn.Identity()` (torchvision's ResNet classes have width 64).
"""

import os
import sys
import tempfile

import jax
from absl import app, flags, logging

from tlflax.config import cli
from tlflax.errors import UserError
from tlflax.models import weights
from tlflax.use import loader

FLAGS = flags.FLAGS
flags.DEFINE_enum("to", "torchvision", ["torchvision"], "Target layout.")
flags.DEFINE_string("in", None, "A run folder, a checkpoint, a safetensors file or hf://ORG/NAME.")
flags.DEFINE_string("out", None, "The safetensors file to write.")


def check_out(out: str) -> None:
  """A `UserError` for an --out that could not receive the file, before any work."""
  if not out.endswith(weights.SUFFIX):
    stem = os.path.splitext(os.path.basename(out))[0] or "model"
    raise UserError(f"--out={out}: convert writes safetensors, not another format (a .pth is "
                    f"read as a pickle): name the file {stem}{weights.SUFFIX}")
  folder = os.path.dirname(os.path.abspath(out))
  if os.path.isdir(out):
    raise UserError(f"--out={out} is a folder: name a file in it, e.g. "
                    f"--out={os.path.join(out, 'model' + weights.SUFFIX)}")
  if not os.path.isdir(folder):
    raise UserError(f"--out={out}: the folder {folder} does not exist: create it first")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f"--out={out}: the folder {folder} cannot be written: choose a folder you "
                    "can write to")


def export(source: str, out: str) -> dict:
  """Writes the model `source` names to `out` (torchvision layout); returns its info. The file
  is written beside `out` and renamed into place, with the permissions of a new file under the
  umask: a failure leaves no partial file."""
  check_out(out)
  model, variables, info = loader.load(source, "--in")
  if model.padding != "torch":
    raise UserError(f"{source} was trained with model.padding='same', whose stride-2 "
                    "convolutions pad differently from PyTorch's: its weights would not give "
                    "the same outputs there; retrain it with model.padding='torch' to export it")
  meta = {k: info[k] for k in ("model", "width", "num_classes", "image_size", "mean", "std",
                               "class_names", "source")}
  part = None
  try:
    fd, part = tempfile.mkstemp(prefix=".convert-", suffix=".part",
                                dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    weights.save(jax.device_get(variables), part, meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(part, 0o666 & ~umask)
    os.replace(part, out)
  except OSError as e:  # a read-only or full file system: nothing is left behind
    raise UserError(f"--out={out} cannot be written ({e.strerror or type(e).__name__}): choose a "
                    "folder you can write to, with free space") from e
  finally:
    if part and os.path.exists(part):
      os.remove(part)
  return info


def main(argv):
  logging.set_verbosity(logging.WARNING)  # quiet: jax's and orbax's INFO lines are not for users
  if len(argv) > 1:
    print(f"tlflax.use.convert: error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  try:
    if not FLAGS["in"].value or not FLAGS.out:
      raise UserError("pass --in=PATH (a run folder, checkpoint, safetensors file or "
                      "hf://ORG/NAME) and --out=FILE.safetensors")
    info = export(FLAGS["in"].value, FLAGS.out)
  except UserError as e:
    print(f"tlflax.use.convert: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {FLAGS.out}: {info['model']} (width {info['width']}, {info['num_classes']} "
        f"classes, {info['image_size']} px) in torchvision layout")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_plain(argv, "tlflax.use.convert"))
