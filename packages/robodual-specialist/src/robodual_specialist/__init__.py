"""robodual-specialist plugins (registered through the 'robodual' entry-point group)."""
