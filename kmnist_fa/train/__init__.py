"""Training a model: the fastai learner and its fit schedule, and the callbacks a run uses (checkpoint,
EMA, distillation, DDP, progress, tracking, transfer). Teachers and orchestration live in `pipelines`.
"""
