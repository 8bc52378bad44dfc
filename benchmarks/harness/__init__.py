"""S-LoRA's experiment harness against the Ray Serve app: launch_server, run_exp, plot_exp."""
