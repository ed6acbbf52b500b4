"""An exported ONNX model opened with onnxruntime, with its decoded metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from damage_lightning.deploy.metadata import ModelMetadata
from damage_lightning.errors import DataValidationError, Problem


@dataclass
class OnnxModel:
    """A loaded model: the onnxruntime session, its metadata, input and output names.

    Build with :meth:`load`.

    Args:
        path: the ``.onnx`` file.
        session: the onnxruntime ``InferenceSession``.
        metadata: the decoded metadata props.
        input_name: the waveform input.
        output_names: every output, in graph order.
        speed_input: the shaft-speed input (``rpm``) of a model with order spectra, else ``None``.
    """

    path: Path
    session: object
    metadata: ModelMetadata
    input_name: str
    output_names: list[str]
    speed_input: str | None = None

    @classmethod
    def load(cls, path: str | Path, providers: list[str] | None = None) -> OnnxModel:
        """Open ``path`` with onnxruntime (CPU unless ``providers`` says otherwise).

        Raises:
            DataValidationError: the file does not load, lacks damage_lightning metadata, or has
                neither a ``probabilities`` nor a ``score`` output.
        """
        import onnxruntime as ort

        path = Path(path)
        try:
            session = ort.InferenceSession(
                str(path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise DataValidationError(
                Problem(str(path), "", f"onnxruntime cannot load the model: {exc}")
            ) from exc
        props = dict(session.get_modelmeta().custom_metadata_map)
        metadata = ModelMetadata.from_props(props, str(path))
        outputs = [o.name for o in session.get_outputs()]
        # A classifier gives probabilities, a novelty detector scores (deploy.novelty).
        if "probabilities" not in outputs and "score" not in outputs:
            raise DataValidationError(
                Problem(
                    str(path), "", f"the model has no 'probabilities' or 'score' output ({outputs})"
                )
            )
        inputs = [i.name for i in session.get_inputs()]
        speed = inputs[1] if len(inputs) > 1 else None
        return cls(path, session, metadata, inputs[0], outputs, speed)

    def run(
        self, windows: np.ndarray, rpm: float | np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Every output for float32 waveform windows ``(B, channels, window_length)``.

        Args:
            windows: the windows.
            rpm: the shaft speed in rpm, one for all windows or one per window; required by a
                model with order spectra (:attr:`speed_input`), ignored by others.

        Raises:
            DataValidationError: the model takes the shaft speed and none is given.
        """
        windows = np.ascontiguousarray(windows, np.float32)
        feed = {self.input_name: windows}
        if self.speed_input is not None:
            if rpm is None:
                column = self.metadata.speed_column
                raise DataValidationError(
                    Problem(
                        str(self.path),
                        "",
                        f"the model uses order spectra and needs the shaft speed (input "
                        f"'{self.speed_input}', rpm): give it (--rpm, or a manifest column "
                        f"'{column}')",
                    )
                )
            speeds = np.broadcast_to(np.asarray(rpm, np.float32), (len(windows),))
            feed[self.speed_input] = np.ascontiguousarray(speeds)
        values = self.session.run(None, feed)
        return dict(zip(self.output_names, (np.asarray(v) for v in values), strict=True))


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of an exported ONNX model (onnxruntime only, no torch)."""
    return OnnxModel.load(path).metadata
