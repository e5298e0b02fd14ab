"""Stage 1: LLM knowledge about action classes (generate, store, embed, search, report)."""
