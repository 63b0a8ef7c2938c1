from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.split("#")[0].strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="megasparse",
    version="0.1.0",
    description="Pretraining with in-kernel activation-sparsity counters and Sparsing-Law analysis",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megasparse", "megasparse.*", "tools", "tools.*"]),
    package_data={"megasparse": ["resources/*", "resources/**/*"]},
    install_requires=requirements,
    entry_points={
        "console_scripts": [
            "megasparse-train=megasparse.train:main",
            "megasparse-train-tokenizer=tools.train_tokenizer:main",
            "megasparse-preprocess=tools.preprocess_data:main",
            "megasparse-merge-datasets=tools.merge_datasets:main",
        ]
    },
)
