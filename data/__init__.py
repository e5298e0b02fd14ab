"""Datasets shared by both stages: the class registry, video loading, the synthetic benchmark, episodes."""
