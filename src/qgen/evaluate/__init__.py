"""Evaluation: lm-evaluation-harness tasks (declarative YAML in tasks/) and token-level perplexity."""
