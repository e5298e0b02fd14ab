"""What every stage shares: the one registry type and the one user-error type."""
