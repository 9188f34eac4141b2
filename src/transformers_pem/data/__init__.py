"""Data: `datasets` loaders of Cityscapes, ADE20K and Hub datasets (`loaders`), the official training augmentation
and collation (`augmentation`), synthetic datasets in the genuine layouts (`synthetic`), and image and video sources
(`sources`).
"""
