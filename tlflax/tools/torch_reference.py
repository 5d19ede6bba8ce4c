"""PyTorch reference of tlflax's CIFAR ResNet train step, for side-by-side speed ratios on a CPU.

Imports only torch (not jax, not tlflax), so `python -m tlflax.tools.bench --compare-torch` can
run it with another interpreter (`--torch_python`) where torch lives in its own environment:

  python tlflax/tools/torch_reference.py --batch 64 --width 64 --classes 100 --size 32 --steps 10

Prints one JSON line: {"img_per_s", "step_ms", "torch", "threads"}. Same network as
`tlflax.models.resnet.ResNet` (3x3 stem, no max-pool, BasicBlocks, projection shortcuts), SGD
with nesterov momentum, channels_last memory format, eager mode.
"""

import argparse
import json
import time


def main():
  # torch is no dependency of tlflax: the bench runs this file in a Python that has it.
  import torch
  import torch.nn.functional as F
  from torch import nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = nn.BatchNorm2d(cout)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(cout)
      self.proj = nn.Sequential()
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.b1(self.c1(x)))
      return F.relu(self.b2(self.c2(y)) + self.proj(x))

  class ResNet(nn.Module):
    def __init__(self, stages, width, classes):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
      layers, cin = [], width
      for i, blocks in enumerate(stages):
        for j in range(blocks):
          layers.append(Block(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
          cin = width * 2**i
      self.layers = nn.Sequential(*layers)
      self.head = nn.Linear(cin, classes)

    def forward(self, x):
      x = self.layers(F.relu(self.stem(x)))
      return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--stages", default="2,2,2,2")
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  torch.manual_seed(0)
  model = ResNet([int(s) for s in args.stages.split(",")], args.width, args.classes).to(
      memory_format=torch.channels_last)
  x = torch.rand(args.batch, 3, args.size, args.size).to(memory_format=torch.channels_last)
  y = torch.randint(0, args.classes, (args.batch,))
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  step()
  step()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    step()
  dt = (time.perf_counter() - t0) / args.steps
  print(json.dumps({"img_per_s": args.batch / dt, "step_ms": 1e3 * dt,
                    "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
