"""The official detectron2 checkpoints: their safe loading and key mapping (`checkpoint_io`), their yaml configs and
the conversion to a saved PEM (`convert`).
"""
