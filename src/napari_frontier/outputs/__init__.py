"""Outputs: frontier vectors, batch prediction to files with provenance, project files."""
