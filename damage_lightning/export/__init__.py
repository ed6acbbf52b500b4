"""Export: the deployable module, its verified ONNX and TorchScript files, checkpoint loading.

One target per file (``onnx.py``, ``torchscript.py``, ``int8.py``); a new target is one new file
plus its line in ``folder.export_all``. The metadata every target carries comes from one builder,
:meth:`damage_lightning.export.spec.ExportSpec.metadata`.
"""

from damage_lightning.deploy.metadata import ModelMetadata
from damage_lightning.export.checkpoint import deployable_from_checkpoint, load_from_checkpoint
from damage_lightning.export.deployable import (
    INPUT_NAME,
    OUTPUT_NAMES,
    DeployableModel,
    example_waveforms,
)
from damage_lightning.export.folder import LABELS_FILE, PREPROCESSING_FILE, export_all
from damage_lightning.export.int8 import INT8_FILE, QuantizationData, export_int8, verify_int8
from damage_lightning.export.onnx import ONNX_FILE, export_onnx, verify_onnx
from damage_lightning.export.spec import ExportSpec
from damage_lightning.export.torchscript import (
    TORCHSCRIPT_FILE,
    TORCHSCRIPT_METADATA_FILE,
    export_torchscript,
    read_torchscript_metadata,
    verify_torchscript,
)

__all__ = [
    "INPUT_NAME",
    "INT8_FILE",
    "LABELS_FILE",
    "ONNX_FILE",
    "OUTPUT_NAMES",
    "PREPROCESSING_FILE",
    "TORCHSCRIPT_FILE",
    "TORCHSCRIPT_METADATA_FILE",
    "DeployableModel",
    "ExportSpec",
    "ModelMetadata",
    "QuantizationData",
    "deployable_from_checkpoint",
    "example_waveforms",
    "export_all",
    "export_int8",
    "export_onnx",
    "export_torchscript",
    "load_from_checkpoint",
    "read_torchscript_metadata",
    "verify_int8",
    "verify_onnx",
    "verify_torchscript",
]
