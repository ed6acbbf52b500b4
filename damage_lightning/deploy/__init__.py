"""Torch-free deployment: an exported ONNX model, its metadata, and per-recording predictions.

What a gateway installs: ``numpy``, ``pandas``, ``pyarrow`` and ``onnxruntime`` beside this package
(``pip install --no-deps damage_lightning``). ``python -m damage_lightning.deploy MODEL DATA``.
"""
