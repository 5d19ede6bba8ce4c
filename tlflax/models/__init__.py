"""The models layer: the ResNet family (`resnet`), a convolution with GEMM weight gradients for the
CPU (`conv`), torchvision / timm state dicts to tlflax variables and back (`torch_layout`), and
weight files: safetensors and hf://ORG/NAME (`weights`).

May import: `tlflax.errors`, `tlflax.parallel`, `tlflax.config`, `tlflax.io`, `tlflax.data`.
"""
