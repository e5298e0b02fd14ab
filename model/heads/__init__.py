"""Method heads, one module each, registered by name (see fsar.model.registry)."""
