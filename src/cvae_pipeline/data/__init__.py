"""Data: acquire the raw archive, extract it safely, decode it into arrays."""
