"""One rank of the 2-process loader sharding test (python_tests/data/test_loader.py).

It lives in a top-level test module because spawned processes import the worker function by module
name: test modules collected with --import-mode=importlib are not importable in the children, while
this folder is on sys.path (pytest's `pythonpath`), which the children inherit.
"""
import json

import torch

from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.loader import make_loader


def rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ds = open_dataset("synthetic:7", resolution=8, frames=2)
        loader = make_loader(ds, 2, seed=4, num_workers=0, device="cpu")  # rank and world from the group
        seen = [i for b in loader for i in b["index"].tolist()]
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(seen, f)
    finally:
        torch.distributed.destroy_process_group()
