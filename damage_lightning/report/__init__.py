"""The PDF training report and its analysis (imported lazily: training does not need reportlab)."""
