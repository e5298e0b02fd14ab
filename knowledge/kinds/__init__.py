"""Knowledge kinds, one module each, registered in ``fsar.knowledge.kinds.KINDS``."""
