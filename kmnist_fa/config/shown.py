"""Which of a run's options a display lists: those that shaped the run.

run.json records every option, so a run can be re-created exactly. Listed whole, that
record reads as if the run had chosen `bn None` or a distillation weight it never
used; `models show`, report.html and the hub model card list what this module keeps,
with the learning rate the run actually trained at (run.json's `lr`) beside it.
"""
from __future__ import annotations

from .options import OPTIONS, TrainConfig

# option: whether the feature it tunes is on (transfer options follow --from, see `_in_effect`)
_FEATURE_ON = {
    "pseudo_threshold": lambda cfg: cfg.data.pseudo is not None,
    "distill_weight": lambda cfg: cfg.reg.teacher is not None,
    "distill_temp": lambda cfg: cfg.reg.teacher is not None,
    "valid_pct": lambda cfg: cfg.split.kind == "holdout",
    "tta_n": lambda cfg: cfg.predict.tta,
    "tta_beta": lambda cfg: cfg.predict.tta,
}


def _in_effect(cfg: TrainConfig, name: str) -> bool:
    o = OPTIONS[name]
    if o.group == "transfer" and name != "from_run" and cfg.transfer.from_run is None:
        return False
    return _FEATURE_ON.get(name, lambda _: True)(cfg)


def shown_options(cfg: TrainConfig) -> dict[str, object]:
    """{option: value} of the options that shaped the run, in declaration order.

    Left out: an option still at a default that means unset or off (None, False, 0: no
    momentum override, no mixup, no label smoothing ...), and the options of a feature
    the run did not use (the distillation weight without teachers, transfer options
    without --from, the holdout fraction of a k-fold or --full run).
    """
    out = {}
    for name, value in cfg.flat().items():
        default = OPTIONS[name].default
        if (not default and value == default) or not _in_effect(cfg, name):
            continue
        out[name] = value
    return out
