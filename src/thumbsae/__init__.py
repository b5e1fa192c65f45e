"""thumbsae: sparse autoencoders on CLIP features of thumbnails, and what gets views."""

__version__ = "0.1.0"
