"""robodual-specialist: the DiT diffusion specialist of RoboDual (paper 3.2) and its conditioners.

Registered through the ``robodual`` entry point (``plugin.py``): specialist ``dit``
(:class:`robodual_specialist.model.DiTSpecialist`), conditioners ``cross_attention``, ``film`` and
``in_context``, and the commands ``robodual train specialist`` / ``robodual bench specialist``.
Importing this package imports nothing heavy; the modules are loaded when used.
"""
