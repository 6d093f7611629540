"""Pipelines: training runs end to end (`training`: train, resume), teachers and pseudo-labels
(`teachers`), k-fold sweeps (`sweep`) and Optuna search (`search`).
"""
