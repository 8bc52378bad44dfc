"""What every benchmark family shares: S-LoRA traces, the HTTP load client, synthetic models and adapters,
result files and their metadata."""
