################################################################################
#
# python-hatch-vcs-tunable
#
################################################################################

# Opentrons' hatch version plugin; opentrons and opentrons-shared-data
# name it in their build-system requirements.
PYTHON_HATCH_VCS_TUNABLE_VERSION = 0.0.1a3
PYTHON_HATCH_VCS_TUNABLE_SOURCE = hatch_vcs_tunable-$(PYTHON_HATCH_VCS_TUNABLE_VERSION).tar.gz
PYTHON_HATCH_VCS_TUNABLE_SITE = $(OT2_PYPI_PACKAGES)/9d/b4/c9a31f79b58ee2e503dc56e7d8196af544c5d0fe227b08e1988291fe5a62
PYTHON_HATCH_VCS_TUNABLE_SETUP_TYPE = hatch
PYTHON_HATCH_VCS_TUNABLE_LICENSE = Apache-2.0
PYTHON_HATCH_VCS_TUNABLE_LICENSE_FILES = LICENSE
HOST_PYTHON_HATCH_VCS_TUNABLE_DEPENDENCIES = host-python-hatch-vcs
# Its build requirements pin hatchling 1.27.0 and hatch-vcs 0.4.0; it
# builds with Buildroot's newer ones.
HOST_PYTHON_HATCH_VCS_TUNABLE_BUILD_OPTS = --skip-dependency-check
HOST_PYTHON_HATCH_VCS_TUNABLE_ENV = \
	SETUPTOOLS_SCM_PRETEND_VERSION=$(PYTHON_HATCH_VCS_TUNABLE_VERSION)

$(eval $(host-python-package))
