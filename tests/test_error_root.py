"""One error root: every typed error is an MMEdgeError; every CLI turns one into exit 2 with a
message and no traceback, and lets any other exception (a bug) through with its traceback."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from calibration.errors import CalibrationError, PrecisionToleranceError
from export.build import BuildError, PrecisionStopped
from export.select import PatternSelectionError
from export.tensorrt import TensorRTUnavailable
from export.validate import ParityError
from runtime.cli_errors import EXIT_REFUSED
from runtime.errors import ConfigError, MMEdgeError, NotFound, UnknownPrecision
from runtime.external_data import MalformedGraph
from runtime.preprocess_base import PreprocessError
from runtime.runtime_cli import CLIInputError
from train.data.errors import ChecksumError, DataFormatError, DatasetFetchError, UnknownDatasetError
from train.data.readers import ReadError

ROOT = Path(__file__).resolve().parents[1]
# error class -> the builtin base its callers may still catch it by
TYPED = {BuildError: RuntimeError, PrecisionStopped: ValueError, ParityError: ValueError,
         CalibrationError: Exception, PrecisionToleranceError: Exception, DataFormatError: ValueError,
         DatasetFetchError: RuntimeError, ChecksumError: RuntimeError, UnknownDatasetError: ValueError,
         ReadError: ValueError, PatternSelectionError: ValueError, MalformedGraph: ValueError,
         TensorRTUnavailable: RuntimeError, CLIInputError: Exception, PreprocessError: ValueError,
         ConfigError: ValueError, NotFound: FileNotFoundError, UnknownPrecision: ValueError}


@pytest.mark.parametrize("cls", list(TYPED), ids=lambda c: c.__name__)
def test_every_typed_error_shares_the_root_and_keeps_its_builtin_base(cls: type) -> None:
    assert issubclass(cls, MMEdgeError) and issubclass(cls, TYPED[cls])


def test_library_code_never_raises_systemexit() -> None:
    offenders = []
    for pkg in ("runtime", "train", "export", "calibration"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            text = path.read_text().split('if __name__ == "__main__":')[0]
            offenders += [f"{path.relative_to(ROOT)}:{m.group(0)}"
                          for m in re.finditer(r"raise SystemExit|sys\.exit\(|\bexit\(", text)]
    assert not offenders, offenders


def _refused(capsys: pytest.CaptureFixture, rc: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert rc == EXIT_REFUSED and needle in err and "Traceback" not in err, (rc, err)


def test_train_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train.cli.eval as eval_cli
    from train.cli import main

    argv = ["eval", "--method", "late-fusion", "--dataset", "tiny2", "--runs-dir", str(tmp_path)]
    monkeypatch.setattr(eval_cli, "run_eval_command", lambda a: (_ for _ in ()).throw(
        DataFormatError(tmp_path / "samples.jsonl", 3, "bad label")))
    _refused(capsys, main(argv), "mmedge train eval: error: ")
    # an internal ValueError is a bug, not "bad input": it keeps its traceback
    monkeypatch.setattr(eval_cli, "run_eval_command", lambda a: {}["missing"])
    with pytest.raises(KeyError):
        main(argv)
    monkeypatch.setattr(eval_cli, "run_eval_command", lambda a: int("x"))
    with pytest.raises(ValueError):
        main(argv)


def test_export_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import export.build as build
    from export.cli import main

    argv = ["build", "--run", str(tmp_path / "no-run"), "--no-progress"]
    _refused(capsys, main(argv), "train first")  # NotFound from train.runs
    monkeypatch.setattr(build, "build_bundle", lambda cfg: {}["missing"])
    with pytest.raises(KeyError):
        main(argv)


def test_calibrate_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import calibration.cli as cli

    argv = ["int8", "--onnx", str(tmp_path / "g.onnx"), "--feeds", str(tmp_path / "none.npz"),
            "--out", str(tmp_path / "o.onnx")]
    _refused(capsys, cli.main(argv), "feeds file")
    monkeypatch.setattr(cli, "load_feeds", lambda *a: {}["missing"])
    with pytest.raises(KeyError):
        cli.main(argv)


def test_runtime_and_bench_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    import runtime.bench as bench
    import runtime.runtime_cli as runtime_cli
    from runtime.bench_cli import main as bench_main

    _refused(capsys, runtime_cli.main(["info", str(tmp_path / "none")]), "mmedge runtime info")
    _refused(capsys, bench_main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path)]), "mmedge bench")
    monkeypatch.setattr(runtime_cli, "info", lambda *a, **k: {}["missing"])
    with pytest.raises(KeyError):
        runtime_cli.main(["info", str(tmp_path / "none")])
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: {}["missing"])
    with pytest.raises(KeyError):
        bench_main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path), "--no-cold-start"])


def test_console_script_exit_statuses(tmp_path: Path) -> None:
    """Through the real `mmedge` entry point: 2 and one line for a typed error, 1 and a traceback for a bug."""
    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)

    typed = run(f"import sys; from runtime.cli import main; sys.exit(main(['runtime', 'info', {str(tmp_path)!r}]))")
    assert typed.returncode == 2 and "Traceback" not in typed.stderr and typed.stderr.count("\n") == 1, typed.stderr
    bug = run("import sys, runtime.runtime_cli as r; r.info = lambda *a, **k: {}['x']\n"
              f"from runtime.cli import main; sys.exit(main(['runtime', 'info', {str(tmp_path)!r}]))")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError" in bug.stderr, bug.stderr
    helps = run("from runtime.cli import main; main(['--help'])")
    assert "exit status: 0 done; 2 refused" in helps.stdout
