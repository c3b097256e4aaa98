################################################################################
#
# python-hatch-dependency-coversion
#
################################################################################

# Opentrons' hatch metadata plugin; opentrons names it in its
# build-system requirements.
PYTHON_HATCH_DEPENDENCY_COVERSION_VERSION = 0.0.1a4
PYTHON_HATCH_DEPENDENCY_COVERSION_SOURCE = hatch_dependency_coversion-$(PYTHON_HATCH_DEPENDENCY_COVERSION_VERSION).tar.gz
PYTHON_HATCH_DEPENDENCY_COVERSION_SITE = $(OT2_PYPI_PACKAGES)/ce/ef/e0b3318483cf797cd25c7bc80eb0852802723ee22631e9897433b25a1209
PYTHON_HATCH_DEPENDENCY_COVERSION_SETUP_TYPE = hatch
PYTHON_HATCH_DEPENDENCY_COVERSION_LICENSE = Apache-2.0
PYTHON_HATCH_DEPENDENCY_COVERSION_LICENSE_FILES = LICENSE
HOST_PYTHON_HATCH_DEPENDENCY_COVERSION_DEPENDENCIES = \
	host-python-hatch-vcs \
	host-python-packaging
# Its build requirements pin hatchling 1.27.0 and hatch-vcs 0.4.0; it
# builds with Buildroot's newer ones.
HOST_PYTHON_HATCH_DEPENDENCY_COVERSION_BUILD_OPTS = --skip-dependency-check
HOST_PYTHON_HATCH_DEPENDENCY_COVERSION_ENV = \
	SETUPTOOLS_SCM_PRETEND_VERSION=$(PYTHON_HATCH_DEPENDENCY_COVERSION_VERSION)

$(eval $(host-python-package))
