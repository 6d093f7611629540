"""The run store: where runs live (`paths`), what run.json holds (`record`), listing and locking
(`store`) and weights on disk (`weights`, where torch is imported only when a file is read or written).

The names below are the layer's public API, so `from kmnist_fa import runs` then
`runs.RunRecord.read(path)` reads as it always did; modules inside the package import
from the submodules. Nothing here imports torch.
"""
from .paths import (
                    CKPT_FILE,
                    CURVES_FILE,
                    HISTORY_FILE,
                    HUB_CONFIG,
                    HUB_WEIGHTS,
                    MODEL_FILE,
                    REFERENCE_PREFIX,
                    RUN_FILE,
                    check_name,
                    default_name,
                    is_hub_folder,
                    models_dir,
                    reference_default,
                    reference_dir,
                    reference_runs,
                    run_path,
)
from .record import (
                    FORMAT_VERSION,
                    Best,
                    DataSource,
                    Norm,
                    Parent,
                    RunRecord,
                    SplitSizes,
                    lineage,
)
from .store import Unreadable, list_runs, remove_leftovers, run_lock, writer_alive
from .weights import cpu_state, load_state, save_state

__all__ = ["CKPT_FILE", "CURVES_FILE", "HISTORY_FILE", "HUB_CONFIG", "HUB_WEIGHTS", "MODEL_FILE", "REFERENCE_PREFIX",
           "RUN_FILE", "FORMAT_VERSION", "Best", "DataSource", "Norm", "Parent", "RunRecord", "SplitSizes", "Unreadable",
           "check_name", "cpu_state", "default_name", "is_hub_folder", "lineage", "list_runs", "load_state",
           "models_dir", "reference_default", "reference_dir", "reference_runs", "remove_leftovers", "run_lock",
           "run_path", "save_state", "writer_alive"]
