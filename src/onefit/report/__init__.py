"""Reports: plots of a search's front (matplotlib, imported only when a plot is drawn)."""
