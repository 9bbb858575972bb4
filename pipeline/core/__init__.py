"""The core library: pure functions on numpy arrays and paths, no CLI concerns."""
