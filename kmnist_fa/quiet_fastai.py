"""Import fastai once, without torch's import-time deprecation notice.

`fastai.layers` calls `torch.jit.script` as it is imported, which torch >= 2.10 reports
as a FutureWarning that users cannot act on. Every fastai module imports it, so
modules of kmnist-fa that use fastai import this one first; their own fastai imports
then find it loaded and stay quiet, while warnings raised later are left alone.
"""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import fastai.torch_basics  # noqa: F401
