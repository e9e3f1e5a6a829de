"""Reading finished or running run directories: reports, plots, comparisons."""
