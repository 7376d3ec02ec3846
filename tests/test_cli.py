"""The console script: groups, help, and clear errors (one test per command lives with its library)."""
import subprocess
import sys
from pathlib import Path

from runtime.cli import main


def test_help_lists_every_group(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("train", "export", "calibrate", "bench", "demo"):
        assert f"  {group}" in out


def test_unknown_group_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown group 'trian'" in capsys.readouterr().err


def test_python_dash_m_entry_points_work():
    for package in ("train", "export"):
        out = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "mmedge"  # the venv's bin is not always on PATH (make test)
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "groups:" in out.stdout
