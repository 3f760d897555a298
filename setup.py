"""Packaging for diffula.

The package metadata lives in `settings.ini` (the nbdev 2 convention the project follows); this file
reads it so that `pip install -e .` and nbdev agree on one source of truth.
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]

classifiers = {"3": "Development Status :: 3 - Alpha"}
scripts = [s.strip() for s in c.get("console_scripts", "").split() if s.strip()]
url = c.get("git_url", "").strip()  # empty until the project has a public home: then no URL at all, not a placeholder

setuptools.setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    author=c["author"],
    author_email=c["author_email"],
    **({"url": url} if url else {}),
    license="Apache-2.0",
    keywords=c["keywords"].split(),
    classifiers=[
        classifiers[c["status"]],
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=f">={c['min_python']}",
    packages=setuptools.find_packages(include=["diffula", "diffula.*"]),
    include_package_data=True,
    install_requires=c["requirements"].split(),
    extras_require={
        "dev": c["dev_requirements"].split(),
        "faces": c["faces_requirements"].split(),
        "ray": c["ray_requirements"].split(),
        "dp": c.get("dp_requirements", "").split(),
    },
    entry_points={"console_scripts": scripts, "nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    zip_safe=False,
)
