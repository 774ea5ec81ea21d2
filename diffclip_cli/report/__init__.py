"""Reports: accuracy metrics, JSON/Markdown/PNG reports and map quicklooks."""
