"""The measurements of ``scripts/benchmark.py``, one module per benchmark.

Every module imports only the standard library at its top (torch, numpy and the package inside
the functions that use them): the Keras worker runs ``scripts/benchmark.py`` in an interpreter
that has tensorflow and may lack torch, and torch and TensorFlow never share a process.
"""
