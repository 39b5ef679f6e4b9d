"""Map the repository's directories to namespaced import names.

daemon/ -> dutybridge, plugins/ -> dutybridge_plugins, sandbox/ -> dutybridge_sandbox,
demo/ -> dutybridge_demo, so installing dutybridge never shadows python-daemon's
`daemon` or another `plugins`.
"""

from setuptools import find_packages, setup

ROOTS = {
    "dutybridge": "daemon",
    "dutybridge_plugins": "plugins",
    "dutybridge_sandbox": "sandbox",
    "dutybridge_demo": "demo",
}

packages, package_dir = [], {}
for name, directory in ROOTS.items():
    packages.append(name)
    package_dir[name] = directory
    packages += [f"{name}.{sub}" for sub in find_packages(directory)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"dutybridge_sandbox": ["*.toml"]},
)
