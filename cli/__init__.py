"""Thin Typer front ends for the console scripts."""
