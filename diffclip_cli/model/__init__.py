"""The DiffCLIP network, its text encoder, presets and self-describing model files."""
