"""Metrics: Inception features, FID, KID, precision/recall, class consistency, likelihood bounds."""
