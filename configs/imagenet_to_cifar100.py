"""Transfer as it is done in practice: an ImageNet ResNet-50 (torchvision's weights), its last
layer replaced, fine-tuned on CIFAR-100.

The source is not trained here. `transfer.init_from` names its weights: by default
hf://timm/resnet50.tv_in1k (torchvision's ImageNet-1k ResNet-50 as safetensors on the Hugging
Face hub; `pip install 'tlflax[hub]'`, network once or a filled cache), or any safetensors file
of a torchvision / timm ResNet-50 (`--config.transfer.init_from=resnet50.safetensors`). Inputs are
normalised with the source's statistics (ImageNet's).

CIFAR's 32x32 images are resized to 128x128: an ImageNet stem (7x7 stride 2, then a stride-2
max-pool) would leave 8x8 of a 32x32 image before the first stage and 1x1 after the last.
Fine-tuning schedule: 20 epochs, SGD with nesterov momentum 0.9 at 0.01 (a tenth of training
from scratch), weight decay 1e-4, batch 128, 1 warm-up epoch then cosine; random crops after
16 pixels of padding (4 at 32 px) and flips. `--mode=compare` runs the same ResNet-50 from random
weights beside it (scratch) and every arm from the ImageNet weights. `:val` holds out 10% of the
training split for selection.
"""

from tlflax import config as config_lib

ARGS = {"val": "hold out the last 10% of each training split to select the best epoch on"}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.model.name = "resnet50_imagenet"
  fine_tune = {"image_size": 128, "crop_padding": 16, "learning_rate": 0.01,
               "weight_decay": 1e-4, "batch_size": 128, "eval_batch_size": 500}
  config.target = config_lib.phase_config("cifar100", epochs=20, **fine_tune)
  config.source = config_lib.phase_config("imagenet2012", epochs=2, **fine_tune)  # not trained
  config.transfer.init_from = "hf://timm/resnet50.tv_in1k"
  return config_lib.holdout(config, arg)
