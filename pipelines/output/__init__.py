"""The output folder: its layout, the commit of a run's staged partitions, what a rerun may keep,
and the run manifest."""
