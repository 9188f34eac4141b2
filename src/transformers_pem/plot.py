"""`python -m transformers_pem.plot RUN_DIR`, the training curves' command line (`commands.plot`); the drawing is
`visualization_pem.plot_training_curves`."""

from .commands.plot import main

if __name__ == "__main__":
    main()
