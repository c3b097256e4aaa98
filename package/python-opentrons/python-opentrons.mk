################################################################################
#
# python-opentrons
#
################################################################################

# Bump together with python-opentrons-shared-data (docs/buildroot.md).
PYTHON_OPENTRONS_VERSION = 8.8.2
PYTHON_OPENTRONS_SOURCE = opentrons-$(PYTHON_OPENTRONS_VERSION).tar.gz
PYTHON_OPENTRONS_SITE = $(OT2_PYPI_PACKAGES)/88/f9/8e9fb367276a6fa56268f3ca40202994529f691ce4a10536bcacd782aff9
PYTHON_OPENTRONS_SETUP_TYPE = hatch
PYTHON_OPENTRONS_LICENSE = Apache-2.0
PYTHON_OPENTRONS_LICENSE_FILES = LICENSE
PYTHON_OPENTRONS_DEPENDENCIES = \
	host-python-hatch-dependency-coversion \
	host-python-hatch-vcs-tunable
# Its build requirements pin hatchling 1.27.0; it builds with Buildroot's.
PYTHON_OPENTRONS_BUILD_OPTS = --skip-dependency-check
# The version otherwise comes from git tags of the Opentrons repository.
PYTHON_OPENTRONS_ENV = \
	SETUPTOOLS_SCM_PRETEND_VERSION=$(PYTHON_OPENTRONS_VERSION)

$(eval $(python-package))
