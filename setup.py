from setuptools import find_packages, setup

setup(
    name="minicnn-fer",
    version="0.1.0",
    description="minicnn, a from-scratch NumPy/numba CNN library, and fer, facial expression recognition on it",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["minicnn", "minicnn.*", "fer", "fer.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.23",
        "numba>=0.57",
        # numba compiles np.dot inside a kernel (ops/separable.py's tile products) to SciPy's BLAS
        "scipy>=1.9",
        # OpenCV 5.0 dropped CascadeClassifier and the bundled Haar cascades the webcam demo uses.
        "opencv-python>=4.8,<5",
        # dlib's HOG face detector finds faces the Haar cascades miss (fer/faces.py HogFaces); the
        # prebuilt wheels of dlib, so nothing compiles at install
        "dlib-bin>=19.24",
        # fer.data reads the rows read_csv skips from its ParserWarnings, a Python warning since 2.2
        "pandas>=2.2",
        "matplotlib>=3.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "h5py>=3"],
        "keras": ["h5py>=3"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
)
