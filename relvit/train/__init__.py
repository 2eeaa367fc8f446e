"""One training loop for every classification mode, with checkpoint/resume."""
