"""File formats of the figures sbmoe writes (report and analyze), importable without numpy or matplotlib."""

FIGURE_FORMATS = ("png", "pdf", "svg")
