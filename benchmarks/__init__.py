"""fair_lora's benchmarks, one subpackage per family (benchmarks/README.md lists every command):

    engine/     the engine's steps against the roofline and transformers + peft; step profiles  python -m benchmarks.engine
    e2e/        LLMEngine.generate() end to end on S-LoRA's power-law traces                  python -m benchmarks.e2e
    serving/    the Ray Serve app over HTTP against the engine on the same requests           python -m benchmarks.serving
    harness/    S-LoRA's experiment harness (launch_server, run_exp, plot_exp)                 cd benchmarks && python launch_server.py
    multi_gpu/  K GPU workers, the hot-adapter router against Serve's default                 python -m benchmarks.multi_gpu
    vtc/        Virtual Token Counter fair scheduling against FCFS                             python -m benchmarks.vtc
    soak/       the CPU demo app for --minutes at ~80% load while parts of it are killed       python -m benchmarks.soak
    ops/        the Triton kernels alone (correction, attention, merge)                        python -m benchmarks.ops.correction
    common/     what they share: traces, the HTTP load client, synthetic assets, result files

Each writes `<bench>_<YYYY-MM-DD>_<device>.{json,md,png}`; the latest of each is in benchmarks/results/.
"""
