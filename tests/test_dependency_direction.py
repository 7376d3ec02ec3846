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


# ---- a static scan: function-level (lazy) imports count too ---------------------------------
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


def forbidden_imports(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, module) of every import of a FORBIDDEN top-level package, at any depth of the AST."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_the_scan_sees_an_import_inside_a_function():
    # The check itself must catch what a sys.modules check cannot: an import that only runs when called.
    lazy = "import numpy\n\ndef measure():\n    import torch\n    from train.runs import load_run\n    return torch\n"
    assert forbidden_imports(lazy) == [(4, "torch"), (5, "train.runs")]
    assert forbidden_imports("import numpy\nfrom runtime.manifest import Manifest\n") == []


def test_no_runtime_module_imports_torch_train_export_or_calibration_anywhere():
    offenders = {str(p.relative_to(RUNTIME.parent)): hits for p in sorted(RUNTIME.rglob("*.py"))
                 if (hits := forbidden_imports(p.read_text(), str(p)))}
    assert offenders == {}, f"runtime/ imports forbidden packages (line, module): {offenders}"
