"""cellpipe: a Kaggle pipeline for cell instance segmentation in the Sartorius format."""

__version__ = "0.1.0"
