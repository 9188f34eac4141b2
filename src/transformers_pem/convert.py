"""`python -m transformers_pem.convert`, the converter's command line (`commands.convert`); the library functions are
in `conversion_pem` and `checkpoint_io_pem`."""

from .commands.convert import main

if __name__ == "__main__":
    main()
