"""Helpers shared by the environment plugins: video files, worker threads, C-level stdout."""
