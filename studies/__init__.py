"""The built-in study specs (TOML), shipped inside the wheel as the package hpo.studies."""
