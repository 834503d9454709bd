"""Prediction: a trained network applied in tiles, to regions, and block by block."""
