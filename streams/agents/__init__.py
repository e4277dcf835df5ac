"""Thin Faust agents: read a batch, hand it to the service, nothing else."""
