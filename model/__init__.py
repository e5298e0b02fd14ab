"""Stage 2: backbones, method heads, matching functions, trainer and evaluator."""
