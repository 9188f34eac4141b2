"""`python -m transformers_pem.evaluate CHECKPOINT --dataset ...`: evaluate a PEM checkpoint (see `evaluation_pem`).

Run as a module only. Inside the package, `import evaluate` still resolves to the `evaluate` library (absolute
imports), so this module shadows nothing.
"""

from .evaluation_pem import main

if __name__ == "__main__":
    main()
