"""Models: load a Hugging Face causal LM (hub id, local folder, offline asset, or a seeded random tiny model)
and find the per-architecture declaration (ArchAdapter) the quantization engine walks."""
