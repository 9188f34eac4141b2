"""Fine-tuning with accelerate: the run (`loop`: prepare, run, finish), its settings (`config`), optimiser and schedule
(`optimization`), atomic checkpoints (`checkpoints`), BatchNorm handling (`batch_norm`), logged scalars and curves
(`scalars`).
"""
