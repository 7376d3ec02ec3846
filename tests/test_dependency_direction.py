"""The runtime is what a sensor device installs: it must never pull in torch (DESIGN.md)."""
import subprocess
import sys

FORBIDDEN = ("torch", "transformers", "train", "export", "calibration")

CHECK = """
import importlib, pkgutil, sys
import runtime
for m in pkgutil.walk_packages(runtime.__path__, "runtime."):
    importlib.import_module(m.name)
bad = sorted(k for k in %r if k in sys.modules)
print("LOADED:" + ",".join(bad))
""" % (FORBIDDEN,)


def test_importing_every_runtime_module_never_imports_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.strip().rsplit("LOADED:", 1)[1]
    assert loaded == "", f"runtime pulled in: {loaded}"


def test_mmedge_help_does_not_import_torch():
    code = "import sys; from runtime.cli import main; main(['--help']); print('TORCH' if 'torch' in sys.modules else 'CLEAN')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("CLEAN")
    for group in ("train", "export", "calibrate", "bench", "demo"):
        assert group in out.stdout
