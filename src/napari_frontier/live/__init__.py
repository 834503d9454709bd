"""Live training: typed messages in, typed events out; when to stop; where to paint next."""
