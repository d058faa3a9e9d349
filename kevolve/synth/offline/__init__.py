"""The offline synthesizer: template families and transformations as data."""
