"""The ``adaskip`` command's parsers import nothing heavy: ``--help`` (and every subcommand's) starts in a fraction of a
second, whatever the handlers need."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import PROGRAMS

HEAVY = ("torch", "timm", "torchvision", "pandas", "mlflow", "ray", "sklearn")


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "argv", [["--help"], ["export", "--help"], ["select", "--help"], ["recipe", "--help"], ["doctor", "--help"]]
)
def test_help_imports_no_heavy_package(argv: list[str]):
    program = [sys.executable, str(PROGRAMS / "cli_imports.py"), ",".join(HEAVY)]
    r = subprocess.run(program + argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-500:]
    assert "usage: adaskip" in r.stdout


def test_export_help_states_the_library_default_opset(capsys):
    from adaskip.cli import main
    from adaskip.export import DEFAULT_OPSET
    from adaskip.export_all import DEFAULT_OPSET as ALL_DEPTHS

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_OPSET}; with --all-depths {ALL_DEPTHS})" in text
