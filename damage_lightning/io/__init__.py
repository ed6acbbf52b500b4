"""Torch-free input: discovery, readers, validation, waveform cache, windowing."""
