"""diffusers-compatible pipeline classes (thin layers over kandi.pipelines)."""
