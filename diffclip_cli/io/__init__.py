"""Input and output: rasters, co-registration onto the HSI grid, labels, class tables, maps."""
