"""Everything from CSV files to spectrogram batches."""
