"""The sections of the report PDF, one function each over the typed run record.

``overview`` (title page, analysis), ``inputs`` (model and data, splits, hyperparameters),
``results`` (curves, test results, history, log, reproducibility), ``verdicts`` (recording-level
verdicts, calibration, unknown), ``novelty`` (a novelty detector's test), ``attribution``
(explanations in hertz) and ``sensors`` (the sensor-health gate); ``pdf.render_pdf`` puts them
in the order of :data:`HEADINGS`.
"""

HEADINGS = (
    "1 Analysis",
    "1.1 Executive summary",
    "1.2 Training dynamics",
    "1.3 Recommendations",
    "2 Model and dataset",
    "3 Data splits and leakage check",
    "4 Hyperparameters",
    "5 Training curves",
    "6 Test results",
    "6.4 Explanations in hertz",
    "7 Training history",
    "8 Training log",
    "9 Reproducibility",
    "10 Sensor health",
)


def heading(title: str) -> str:
    """The numbered heading of ``title`` (``heading("Sensor health") == "10 Sensor health"``).

    Sections look their heading up by title, so adding a section renumbers nothing by hand.

    Raises:
        KeyError: no heading has that title.
    """
    for h in HEADINGS:
        if h.split(" ", 1)[1] == title:
            return h
    raise KeyError(f"no report heading titled {title!r}")
