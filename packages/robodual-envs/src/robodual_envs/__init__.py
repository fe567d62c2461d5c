"""robodual-envs plugins: environments and dataset converters."""
