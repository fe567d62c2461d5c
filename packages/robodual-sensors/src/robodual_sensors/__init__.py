"""robodual-sensors plugins (registered through the 'robodual' entry-point group)."""
