"""Stand-ins for the services tests talk to (the Hugging Face Hub, W&B, the Kubernetes API), each a
real HTTP server on 127.0.0.1."""
