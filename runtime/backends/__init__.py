"""Runtime backends, one module per runner (``ort.py``, ``trt.py``) behind ``base.BaseRunner``.

Nothing is re-exported here, so importing this package never imports onnxruntime providers,
TensorRT or CUDA; :func:`dpnet_runtime.backends.base.open_runner` imports a backend on first use.
"""
