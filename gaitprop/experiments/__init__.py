"""Experiment tooling: launching sweeps (locally or on SLURM), reading and plotting results
folders."""
