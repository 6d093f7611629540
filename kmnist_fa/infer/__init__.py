"""Inference: loading runs and predicting with TTA (`predict`), ensembles, interpretation, export, the
torch-free ONNX runtime (`runtime`) and the web demo (`serve`).
"""
