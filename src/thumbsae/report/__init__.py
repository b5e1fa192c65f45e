"""thumbsae.report: what the evaluation and `thumbsae rank` show people.

- `thumbsae.report.panels.write_panels`: per high/low feature its top thumbnails above its top
  reference images, overview grids, and the static `panels/index.html`.
- `thumbsae.report.plots.write_plots`: the study's histograms and magnitude plot, with CSVs for
  `dvc plots`.
- `thumbsae.report.wandb_log.log_evaluation`: panels and the feature-group table in W&B.
- `thumbsae.report.rank_report.write_rank_report`: the HTML report of `thumbsae rank`.

Import from the modules; this package imports nothing, so `import thumbsae.report` stays cheap.
"""
