"""LeRobot datasets (format v3.0, v2.1 and v2.0) to and from robodual Zarr stores.

- :mod:`.layout` reads a LeRobot folder's metadata into one description for every version;
- :mod:`.decode` loads one episode (parquet rows, inline images, video frames matched by timestamp);
- :mod:`.convert` maps features to robodual keys and writes the store (``robodual dataset convert lerobot``);
- :mod:`.export` writes a store back as a LeRobot v3.0 folder (``robodual dataset export lerobot``).
"""
