"""metaworld plugin for robodual."""
