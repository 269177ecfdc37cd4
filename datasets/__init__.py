"""Datasets: the layouts (image lists by view), entry naming and view roles, GPS and semi-positives, and the synthetic generators."""
