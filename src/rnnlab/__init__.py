"""rnnlab: hand-written recurrent layers, exact drop-ins for torch.nn, and the tools to train and compare them."""

__version__ = "0.1.0"
