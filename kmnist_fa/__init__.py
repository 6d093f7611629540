"""kmnist-fa: fastai toolkit for Kuzushiji-MNIST and the rest of the MNIST family."""
__version__ = "0.1.0"
