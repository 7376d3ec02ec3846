"""mmedge export: one ONNX graph per availability pattern, validated and written as a bundle.

export.onnx      export_pattern (the only torch.onnx.export call), export_full_with_placeholders
export.validate  torch vs ORT parity per pattern; ParityError lists every failing output
export.build     BuildConfig + build_bundle: run -> bundles/<dataset>-<method>-<precisions>/
export.tensorrt  TensorRT 10 engines from the bundle's graphs (lazy import; not run here)
Submodules are imported on use so `python -m export --help` stays fast.
"""
