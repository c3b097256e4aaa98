################################################################################
#
# python-opentrons-shared-data
#
################################################################################

# Keep at the version of python-opentrons: opentrons requires exactly its own.
PYTHON_OPENTRONS_SHARED_DATA_VERSION = 8.8.2
PYTHON_OPENTRONS_SHARED_DATA_SOURCE = opentrons_shared_data-$(PYTHON_OPENTRONS_SHARED_DATA_VERSION).tar.gz
PYTHON_OPENTRONS_SHARED_DATA_SITE = $(OT2_PYPI_PACKAGES)/3d/b4/6d66d9b106a2c81f4c91e18e224bc55908df1f10711cb03e9934e65cde36
PYTHON_OPENTRONS_SHARED_DATA_SETUP_TYPE = hatch
PYTHON_OPENTRONS_SHARED_DATA_LICENSE = Apache-2.0
PYTHON_OPENTRONS_SHARED_DATA_LICENSE_FILES = LICENSE
PYTHON_OPENTRONS_SHARED_DATA_DEPENDENCIES = host-python-hatch-vcs-tunable
# Its build requirements pin hatchling 1.27.0; it builds with Buildroot's.
PYTHON_OPENTRONS_SHARED_DATA_BUILD_OPTS = --skip-dependency-check
# The version otherwise comes from git tags of the Opentrons repository.
PYTHON_OPENTRONS_SHARED_DATA_ENV = \
	SETUPTOOLS_SCM_PRETEND_VERSION=$(PYTHON_OPENTRONS_SHARED_DATA_VERSION)

$(eval $(python-package))
