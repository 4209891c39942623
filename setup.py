"""pip/colcon install of the pcic_ros Python package and its `pcic` command."""

from setuptools import find_packages, setup

package_name = "pcic_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    package_data={package_name: ["checkpoints/*.pt"]},
    python_requires=">=3.10",
    install_requires=["torch", "compressai", "numpy", "pillow", "tqdm", "pyyaml"],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "pcic = pcic_ros.cli:main",
            "pcic_encoder_node = pcic_ros.ros.encoder_node:main",
            "pcic_decoder_node = pcic_ros.ros.decoder_node:main",
        ]
    },
    license="Apache-2.0",
    description="LiDAR-assisted learned image compression for ROS 2 vehicles",
)
