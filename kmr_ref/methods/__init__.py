"""Torch instantiations of KMR methods, one module per method, written as the spec states them."""
