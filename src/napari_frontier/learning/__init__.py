"""Learning: the network, its training loop, patches, losses, settings and metrics."""
