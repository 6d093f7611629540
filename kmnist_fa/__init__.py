"""kmnist-fa: fastai toolkit for Kuzushiji-MNIST and the rest of the MNIST family.

The package is layered (docs/architecture.md): core <- models <- config <- data <-
runs <- train <- infer <- pipelines <- cli, each importing only the layers below it.
"""
import warnings

__version__ = "0.1.0"

# The one warnings filter of the package, installed before any submodule loads: fastai.layers
# calls torch.jit.script as it is imported, which torch >= 2.10 reports as a FutureWarning that
# users cannot act on. Only that message is silenced; every other warning is left alone.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
