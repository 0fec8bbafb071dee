"""aver stage one: raw audio-visual clips -> a shareable, resumable Zarr feature cache.

Heavy libraries (facenet-pytorch, OpenCV, PyAV, timm, transformers) are imported only inside the
module that uses them, so importing this package is cheap.
"""

__version__ = "0.1.0"
