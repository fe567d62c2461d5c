"""robodual kernel: every other robodual package imports only this one."""

__version__ = "0.1.0"
