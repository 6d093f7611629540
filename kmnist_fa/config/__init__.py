"""Training options (`options`: TrainConfig, declared once) and recipes (`recipes`: TOML files of options).

The option schema checks architecture names against `models.registry`, so it sits above `models`.
"""
