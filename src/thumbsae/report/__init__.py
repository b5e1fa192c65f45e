"""thumbsae.report: what the evaluation, `thumbsae rank` and `thumbsae compare` show people.

- `thumbsae.report.panels.write_panels`: per high/low feature its top thumbnails above its top
  reference images, overview grids, and the static `panels/index.html`.
- `thumbsae.report.plots.write_plots`: the study's histograms and magnitude plot (PNGs, which
  `dvc plots` shows, and the CSVs they draw).
- `thumbsae.report.wandb_log.log_evaluation`: panels and the feature-group table in W&B;
  `log_comparison_row`: a training run's comparison numbers in W&B.
- `thumbsae.report.rank_report.write_rank_report`: the HTML report of `thumbsae rank`.
- `thumbsae.report.compare_report.write_comparison_report`: `thumbsae compare`'s CSV, figures and
  dashboard (runs side by side with their evaluations).
- `thumbsae.report.html.render_page`: every HTML page above comes from `report/templates/`
  (Jinja2, autoescaped) with the one stylesheet `templates/thumbsae.css`.

Import from the modules; this package imports nothing, so `import thumbsae.report` stays cheap.
"""
