"""Generalization analysis: paper tables, figures and W&B publishing built from results.json files.

tidy      output dirs -> one analysis frame (a row per job, task, metric, beside its FP baseline)
groups    the S2/S3 task families: from each job's `config.eval_suite.groups` or an explicit mapping
stats     mean ± std across seeds; paired bootstrap over evaluation items
s1        quantized vs FP per task and task family
matrix    calibration × test matrices (S2 task families, S3 subject categories), win counts and ID-vs-OOD gaps
ablation  metric against calibration size / sequence length
tables    one table -> Markdown, LaTeX and CSV
figures   heatmaps and radar charts
report    the scenario reports under a report dir (what `qgen report` and `make tables figures` run)
ranking   calibration sets ranked by the damage measured on one target dataset
recommend `qgen recommend`: that ranking, else a token-distance proxy (qgen.data.unigram)
publish   report tables to W&B as tables and an artifact
"""
