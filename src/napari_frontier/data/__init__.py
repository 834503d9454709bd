"""Data in: reading and writing images and checkpoints, axes, normalisation, scribble rules."""
