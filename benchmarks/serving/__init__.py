"""The service over HTTP against the engine on the same requests (bench), which process saturates (process_cpu),
and the presets served on a GPU (gpu_serve_check)."""
