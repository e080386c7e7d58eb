"""What tests share beyond fixtures: servers and models to serve, registries, sweep agents, free ports,
landed data, tiny Hugging Face models and the demo sandbox."""
