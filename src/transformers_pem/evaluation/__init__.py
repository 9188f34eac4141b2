"""Scoring PEM: `evaluate_model` and the Trainer metrics (`evaluate`), the streaming `evaluate` metrics (`metrics`, on
`streaming_metric`), prediction files in the official formats (`submission`), and the metric scripts for
`evaluate.load`.
"""
