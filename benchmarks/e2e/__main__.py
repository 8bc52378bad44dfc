from benchmarks.e2e.bench import main

if __name__ == "__main__":
    main()
