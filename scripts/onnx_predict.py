"""Predict damage classes for recordings with an exported ONNX model, without PyTorch.

A thin entry point of ``python -m damage_lightning.deploy`` (the package installed with
``--no-deps`` beside numpy, pandas, pyarrow and onnxruntime is all a gateway needs):

    python scripts/onnx_predict.py export/model.onnx DATA_DIR_OR_FILE [--output preds.csv]
"""

import sys

from damage_lightning.deploy.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="onnx_predict"))
