"""The `mmedge` console script: a thin dispatcher over command groups.

Groups are imported only when named, so `mmedge --help` and the runtime
groups stay fast and work on a device that installed the runtime alone
(no torch). The training groups say how to install what they need.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from runtime.cli_errors import EPILOG, run_cli


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to option help, unless the help already explains it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        flag = action.nargs == 0  # store_true/false: "(default: True)" on --no-x only confuses
        if "default" in text or flag or default in (None, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {default})"

# group -> (module with main(argv), one-line help, extra that provides it)
GROUPS: dict[str, tuple[str, str, str | None]] = {
    "train": ("train.cli", "pretrain unimodal encoders, train a method, evaluate under missing modalities", "train"),
    "export": ("export.cli", "export one ONNX graph per availability pattern into a bundle", "train"),
    "calibrate": ("calibration.cli", "FP16 / INT8 calibration of exported graphs", "train"),
    "runtime": ("runtime.runtime_cli", "inspect a bundle, run one prediction (torch-free)", None),
    "bench": ("runtime.bench_cli", "latency benchmarks per pattern, precision and provider", None),
    "demo": ("train.recipes.demo", "the end-to-end demo: data, pretraining, training, export, streaming runtime", "train"),
}


def _usage() -> str:
    width = max(map(len, GROUPS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_, _) in GROUPS.items())
    return (
        "usage: mmedge <group> [options]   (mmedge <group> --help for details)\n\n"
        "Multimodal classifiers that keep working when sensors drop out.\n\n"
        f"groups:\n{rows}\n\n{EPILOG}\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    group, rest = args[0], args[1:]
    if group not in GROUPS:
        print(f"mmedge: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, extra = GROUPS[group]
    try:
        module = importlib.import_module(module_name)
        return run_cli(f"mmedge {group}", lambda: module.main(rest))
    except ModuleNotFoundError as err:
        if extra is None or not is_missing_dependency(err):
            raise
        print(missing_extra_message(f"mmedge {group}", err, extra), file=sys.stderr)
        return 2


def is_missing_dependency(err: ModuleNotFoundError) -> bool:
    """True when a third-party package is absent (not a bug in our own modules)."""
    top = (err.name or "").split(".")[0]
    return bool(top) and top not in ("runtime", "train", "export", "calibration")


def missing_extra_message(prog: str, err: ModuleNotFoundError, extra: str) -> str:
    return f"{prog}: needs {err.name!r}, which is not installed; install the extra: pip install 'mmedge[cpu,{extra}]'"


if __name__ == "__main__":
    sys.exit(main())
