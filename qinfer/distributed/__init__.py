"""Tensor parallelism: process groups, the TP collectives the parallel layers call, validation."""
