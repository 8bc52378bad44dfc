from benchmarks.serving.bench import main

if __name__ == "__main__":
    main()
