"""The `pvdm` command's shared behaviour: info, and clean errors instead of tracebacks."""
import json

import pytest

from pvdm_fast import cli


def test_info_lists_versions_build_and_every_registered_op(capsys):
    from pvdm_fast.ops import dispatch

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "_C:" in out
    for name in dispatch.REGISTRY:
        assert f"op {name}: auto ->" in out


def test_info_json_is_parseable(capsys):
    assert cli.main(["info", "--json"]) == 0
    from pvdm_fast.ops import dispatch

    info = json.loads(capsys.readouterr().out)
    assert set(info["build_info"]) >= {"cuda", "cuda_archs", "device_count"}
    assert {row["op"] for row in info["ops"]} == set(dispatch.REGISTRY)



def test_info_lists_the_attention_cases_measured_on_this_gpu():
    from pvdm_fast import info

    data = info.collect()
    assert data["sdpa_routes"] == {} or all("@" in k for k in data["sdpa_routes"])
    data["sdpa_routes"] = {"axial_attention@space-L1024": {"bfloat16": {"fwd": "sdpa", "fwd+bwd": "triton"}}}
    text = info.format_info(data)
    assert "axial_attention@space-L1024 bfloat16: fwd -> sdpa, fwd+bwd -> triton" in text

def test_value_errors_become_exit_code_2_with_a_message(capsys, monkeypatch):
    def boom(args):
        raise ValueError("bad thing: do the other thing")

    def add(sub):
        sub.add_parser("boom").set_defaults(func=boom)

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [add])
    assert cli.main(["boom"]) == 2
    assert "bad thing: do the other thing" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
