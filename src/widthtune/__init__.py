"""widthtune: search the layer-wise widths of convolutional networks, train them from scratch, transfer them."""

__version__ = "0.1.0"
