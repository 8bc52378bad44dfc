from benchmarks.multi_gpu.bench import main

if __name__ == "__main__":
    main()
