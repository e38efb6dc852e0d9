"""The playground's page: one module per panel (its layout and its handlers), the input checks and what a
session keeps. The networks, the kept trajectories and the export files are the library's (playground/)."""
