"""Generation cores: one per model family, shared by the diffusers-compatible layer, the CLI and the server."""
