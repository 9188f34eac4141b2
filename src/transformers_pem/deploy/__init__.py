"""Deploying PEM: ONNX export and int8 quantization (`onnx_export`), the ONNX Runtime model (`onnx_model`), publication
on the Hugging Face Hub (`hub`).
"""
