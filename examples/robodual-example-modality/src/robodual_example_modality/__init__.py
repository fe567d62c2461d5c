"""Example robodual modality plugin: a 6-axis force/torque sensor as specialist tokens."""
