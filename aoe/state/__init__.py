"""Durable runs: the run store, its recorder, and the response cache."""
