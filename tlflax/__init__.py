"""tlflax: transfer learning on images with JAX and Flax."""

__version__ = "0.1.0"
