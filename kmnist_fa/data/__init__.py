"""Data: datasets on disk and their downloads (`datasets`), splits, pixel statistics (`stats`), the
fastai DataBlock pipeline (`pipeline`), and input images for prediction (`images`).
"""
