"""robodual-generalist plugins (registered through the 'robodual' entry-point group)."""
