"""Reading the evaluation networks' weight files with errors in user terms.

A corrupt, truncated or foreign file must say which file it is and what was expected instead of
surfacing the unpickler's `KeyError: 101` or PyTorch's zip reader errors; a file of another known
evaluation network (an I3D passed as the C3D, ...) is named as such.
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib

import torch

# What torch.load / safetensors / np.load raise on a file that is not a readable archive of tensors:
# KeyError (a text file: the unpickler reads its first byte as an opcode), UnpicklingError, RuntimeError
# (PyTorch's zip reader on a truncated file), AttributeError (torch.save of a bare tensor or list).
READ_ERRORS = (pickle.UnpicklingError, KeyError, RuntimeError, EOFError, AttributeError, TypeError, OSError,
               zipfile.BadZipFile, zlib.error)


def read_errors() -> tuple[type[BaseException], ...]:
    """READ_ERRORS plus safetensors' own error type."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - older safetensors
        return READ_ERRORS
    return (*READ_ERRORS, SafetensorError)


def unreadable(path, kind: str, exc: BaseException, expected: str) -> ValueError:
    lines = str(exc).strip().splitlines() or [""]
    # torch's weights_only refusal opens with general advice; its cause is the "Unsupported ..." line
    reason = next((ln.strip() for ln in lines if ln.strip().startswith("Unsupported")), lines[0])
    reason = reason if len(reason) <= 120 else reason.split(". ")[0][:200]  # torch's advice runs long
    return ValueError(f"{path} is not a readable {kind} weight file ({type(exc).__name__}: {reason}); it must be "
                      f"{expected} (download it again if it is truncated)")


def read_state_dict(path: str | os.PathLike, kind: str, expected: str, prefixes=()) -> dict:
    """The tensors of a .pt / .pth / .safetensors file (wrapper keys and `prefixes` stripped); a file
    that cannot be read raises ValueError naming it, the kind wanted and `expected` (the file help)."""
    from pvdm_fast.convert import read_official, strip_prefixes

    try:
        sd = read_official(path)
    except FileNotFoundError:
        raise
    except (ValueError, *read_errors()) as exc:  # read_official's own ValueError names no kind: the cause
        raise unreadable(path, kind, exc.__cause__ or exc, expected) from None
    return strip_prefixes(sd, prefixes) if prefixes else sd


def load_torchscript(path, kind: str, expected: str, device) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location=device)
    except READ_ERRORS as exc:
        raise unreadable(path, kind, exc, expected) from None


def torchscript_arguments(module) -> list[str]:
    """Names of the forward arguments of a TorchScript module (without self)."""
    try:
        return [a.name for a in module.forward.schema.arguments][1:]
    except (AttributeError, RuntimeError):
        return []


# Keys that identify each evaluation network's state dict (after prefix stripping).
_SIGNATURES = (
    ("the Kinetics I3D of FVD (pass it as --i3d)", ("logits.conv3d.weight", "Mixed_5c.b0.conv3d.weight",
                                                     "conv3d_0c_1x1.conv3d.weight")),
    ("the UCF-101 C3D of the Inception Score (pass it as --c3d)", ("fc8.weight", "conv1a.weight", "conv1a/W")),
    ("LPIPS linear heads (pass them as --lpips-heads)", ("lin0.model.1.weight",)),
    ("a VGG16 (for LPIPS: pass it as --lpips)", ("features.0.weight",)),
    ("a pvdm_fast autoencoder", ("xy_pos_embedding",)),
)


def describe_state_dict(keys) -> str:
    """What a state dict looks like, from its keys: a known network, or its first few keys."""
    keys = set(keys)
    for what, marks in _SIGNATURES:
        if any(m in keys for m in marks):
            return f"it looks like {what}"
    shown = ", ".join(sorted(keys)[:4]) or "no tensors"
    return f"its keys ({shown}{', ...' if len(keys) > 4 else ''}) match no evaluation network"
