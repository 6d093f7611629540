"""Run under `torchrun`: train (or resume) one run with kmnist-fa's data-parallel path, then save this
rank's final weights beside the run, so a test can check that every process ended with the same model.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_harness.py DATA ROOT NAME EPOCHS DUMP [--resume]
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    import torch

    torch.set_num_threads(1)
    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.pipelines.training import resume, train

    data, root, name, epochs, dump = sys.argv[1:6]
    if "--resume" in sys.argv:
        res = resume(name, root=root, quiet=True)
    else:
        cfg = TrainConfig.build(arch="lenet5", epochs=int(epochs), lr=1e-2, bs=16, aug="none", data=data)
        res = train(cfg, name=name, root=root, quiet=True)
    state = {k: v.detach().cpu() for k, v in res.learn.model.state_dict().items()}
    torch.save(state, Path(dump) / f"rank{os.environ['RANK']}.pth")


if __name__ == "__main__":
    main()
