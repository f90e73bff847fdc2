"""Every command resolves --device through pvdm_fast.devices: clear ValueErrors, never torch's traceback."""
import pytest
import torch

from pvdm_fast.devices import resolve_device


def test_defaults_and_valid_devices():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("") == resolve_device("auto") == auto
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"


@pytest.mark.parametrize("bad,match", [("tpu", "not a device"), ("cuda:x", "not a device"), ("gpu0", "not a device"),
                                       ("cuda:99", "numbered from 0|CUDA is not available"),
                                       ("mps", "not available|not a device")])
def test_bad_devices_are_value_errors(bad, match):
    if bad == "cuda:99" or not torch.cuda.is_available():
        with pytest.raises(ValueError, match=match):
            resolve_device(bad)


def test_every_command_uses_it(tmp_path, capsys):
    from pvdm_fast import cli
    from pvdm_fast.pipeline import Pipeline
    from pvdm_fast.train.distributed import pick_device

    for call in (lambda: pick_device("tpu"), lambda: Pipeline.__init__.__globals__["_device"]("tpu")):
        with pytest.raises(ValueError, match="not a device"):
            call()
    # sample: the device is checked before the weights are even read
    assert cli.main(["sample", "--autoencoder", str(tmp_path / "a"), "--diffusion", str(tmp_path / "d"),
                     "--out", str(tmp_path / "o"), "--device", "tpu", "--quiet"]) == 2
    assert "not a device" in capsys.readouterr().err
