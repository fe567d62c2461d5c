"""calvin plugin for robodual."""
