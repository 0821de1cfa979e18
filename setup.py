"""Packaging for imgpipe: a TFX transfer-learning image classification pipeline."""

from setuptools import setup

# The stack that resolves and runs together (see README, "Development": the pinned stack).
# tfx 1.16 pins TensorFlow 2.16, TFT 1.16, TFMA 0.47 and ml-metadata 1.16.
INSTALL_REQUIRES = [
    "tfx[kfp]==1.16.0",
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-serving-api==2.16.1",
    # apache-beam 2.7x no longer installs dill, which tfx-bsl 1.16 imports.
    "dill>=0.3.1",
    "grpcio>=1.48",
    "google-crc32c>=1.5",  # TFRecord checksums of the dev server's request log
    "pillow>=10",
    "pyyaml>=6",
    "pydantic>=2.6",
    # the run report's figures (imgpipe/report, Agg backend: no display needed)
    "matplotlib>=3.7",
    # --tune (trainer/tune.py) uses KerasTuner's oracle; tfx 1.16 installs 1.4.x too.
    "keras-tuner>=1.4,<1.5",
]

# scikit-learn supplies the demo's images (load_digits, load_sample_images): demo and dev only.
DEMO = ["scikit-learn>=1.3"]
EXTRAS_REQUIRE = {
    "demo": DEMO,
    "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", *DEMO],
    "airflow": ["apache-airflow==2.10.3"],
}

# The ML system (pipeline, components, trainer, serving) and the application (imgpipe).
PACKAGES = [
    "imgpipe",
    "imgpipe.batch",
    "imgpipe.cli",
    "imgpipe.demo",
    "imgpipe.drift",
    "imgpipe.ingest",
    "imgpipe.orchestration",
    "imgpipe.report",
    "pipeline",
    "components",
    "trainer",
    "serving",
    "serving.devserver",
]

setup(
    name="imgpipe",
    version="0.1.0",
    description="Folder of labelled images -> gated, served image classifier (TFX, transfer learning).",
    python_requires=">=3.10,<3.11",
    packages=PACKAGES,
    package_data={"serving": ["deploy/*", "deploy/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["imgpipe=imgpipe.cli.main:main"]},
)
