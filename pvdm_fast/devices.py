"""One check of a user's device string for every command (train, encode, sample, eval)."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or cuda when available else cpu (None, "" or "auto"). A string torch does not parse, a
    device type this machine lacks or an index past the last device is a ValueError saying what to
    pass, instead of torch's RuntimeError (or an AssertionError) at first use."""
    if device is None or device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N (default: cuda when "
                         "available, else cpu)") from None
    if dev.type in ("cpu", "meta"):
        return dev
    backend = getattr(torch, dev.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        name, what = ("CUDA", "no GPU visible, or torch built without CUDA") if dev.type == "cuda" else (
            dev.type, "not on this machine")
        raise ValueError(f"--device {device}: {name} is not available ({what}); pass --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {device}: this machine has {count} {dev.type} device(s), numbered from 0")
    return dev
