"""Recording: one results.json per job (written atomically), and readers that turn output dirs into tables."""
