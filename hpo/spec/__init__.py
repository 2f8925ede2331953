"""Study specs: TOML -> validated frozen dataclasses, the search space, the parameter registry."""
