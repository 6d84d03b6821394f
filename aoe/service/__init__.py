"""Running workflows for someone: the runner that wires one run (inputs, recorder,
cache, mirror), resume, the queue worker and the HTTP service."""
