"""The bottom layer: errors, atomic writes, file formats, labels and plots, and the one module of private fastai/torch speed patches.

Nothing here imports another layer of the package.
"""
