"""Pictures of PEM results: colour overlays with a legend (`segmentation`) and the prototypes PEM-CA selects
(`prototypes`).
"""
